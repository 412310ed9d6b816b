(signedIn) => {
  // After an event that may have changed the sign-in: keep its session token (and the name shown), or
  // forget it, in this browser. Sign-out ends the session on the server too.
  if (signedIn && signedIn.token) localStorage.setItem("hirpf-annotator", JSON.stringify(signedIn));
  else localStorage.removeItem("hirpf-annotator");
}
