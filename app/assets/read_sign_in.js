() => {
  // The load event's inputs: the sign-in this browser stored (or null), instead of the hidden component's
  // empty value. The key is shared with remember_sign_in.js.
  let stored = null;
  try { stored = JSON.parse(localStorage.getItem("hirpf-annotator") || "null"); } catch (error) {}
  return [stored];
}
