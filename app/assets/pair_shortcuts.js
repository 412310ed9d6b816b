() => {
  // Installed once per page by a load event: `a` / `b` pick a reply of the pair on screen, `t` "about the
  // same" where the study allows it. Keys act only while a pair is on screen, never while a text box has
  // the focus, and never with Ctrl, Alt or Meta held.
  if (window.hirpfPairKeys) return;
  window.hirpfPairKeys = true;
  const shown = (id) => { const el = document.getElementById(id); return !!el && el.offsetParent !== null; };
  const BUTTONS = { a: "pair-pick-a", b: "pair-pick-b", t: "pair-pick-tie" };
  document.addEventListener("keydown", (event) => {
    if (!shown("pair-task-box")) return;
    if (event.target.matches?.("textarea, input:not([type=radio]):not([type=checkbox])")) return;
    if (event.ctrlKey || event.metaKey || event.altKey) return;
    const id = BUTTONS[event.key.toLowerCase()];
    if (!id || !shown(id)) return;
    event.preventDefault();
    document.getElementById(id).click();
  });
}
