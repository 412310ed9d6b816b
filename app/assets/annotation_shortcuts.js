() => {
  // Installed once per page by a load event: keyboard shortcuts for the slots and Submit. Keys act only
  // while the task form is on screen and never while a text box has the focus (Ctrl+Enter excepted).
  if (window.hirpfAnnotationKeys) return;
  window.hirpfAnnotationKeys = true;
  const style = document.createElement("style");
  style.textContent = ".hirpf-slot-current { outline: 3px solid var(--color-accent); outline-offset: 2px; }";
  document.head.appendChild(style);
  const SLOTS = ["slot-1", "slot-2", "slot-3", "slot-4", "slot-5", "slot-6"];
  const TRAIT_KEYS = { h: "high", l: "low", n: "none" };
  const PROFESSION_KEYS = { d: "Doctor", a: "Artist", p: "Programmer", n: "none" };
  let current = 0;
  const shown = (id) => { const el = document.getElementById(id); return !!el && el.offsetParent !== null; };
  const mark = () => SLOTS.forEach((id, i) =>
    document.getElementById(id)?.classList.toggle("hirpf-slot-current", i === current));
  const choose = (id, value) => {
    const input = document.querySelector(`#${id} input[type=radio][value="${value}"]`);
    if (input) input.click();
    return !!input;
  };
  document.addEventListener("click", (event) => {
    const i = SLOTS.findIndex((id) => event.target.closest?.(`#${id}`));
    if (i >= 0) { current = i; mark(); }
    if (event.target.closest?.("#annotate-submit, #annotate-skip, #annotate-back")) { current = 0; mark(); }
  }, true);
  document.addEventListener("keydown", (event) => {
    if (!shown("annotate-task-box")) return;
    const typing = event.target.matches?.("textarea, input:not([type=radio]):not([type=checkbox])");
    if (event.key === "Enter") {
      if (event.target.matches?.("button") || (typing && !(event.ctrlKey || event.metaKey))) return;
      event.preventDefault();
      document.getElementById("annotate-submit")?.click();
      return;
    }
    if (typing || event.ctrlKey || event.metaKey || event.altKey) return;
    const key = event.key.toLowerCase();
    if (shown("slot-scale")) {
      if ("12345".includes(key) && key.length === 1 && choose("slot-scale", key)) event.preventDefault();
      return;
    }
    if (!shown(SLOTS[0])) return;
    let handled = true;
    if (key >= "1" && key <= "6" && key.length === 1) current = Number(key) - 1;
    else if (key === "arrowdown" || key === "j") current = Math.min(current + 1, SLOTS.length - 1);
    else if (key === "arrowup" || key === "k") current = Math.max(current - 1, 0);
    else {
      const value = (current === SLOTS.length - 1 ? PROFESSION_KEYS : TRAIT_KEYS)[key];
      handled = !!value && choose(SLOTS[current], value);
      if (handled) current = Math.min(current + 1, SLOTS.length - 1);
    }
    if (handled) { event.preventDefault(); mark(); }
  });
  mark();
}
