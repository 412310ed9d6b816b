(signedIn) => {
  // After an event that may have changed the sign-in: keep it, or forget it, in this browser.
  if (signedIn && signedIn.annotator) localStorage.setItem("hirpf-annotator", JSON.stringify(signedIn));
  else localStorage.removeItem("hirpf-annotator");
}
