(claim) => {
  // Unlocked: trade the one-time claim for the admin session's cookie, which the server sets HttpOnly (no
  // script, this one included, ever holds the token). When the page goes away (closed, reloaded, left), a
  // beacon ends the session, and every download link with it; the cookie travels with the beacon.
  if (!claim) return;
  fetch("hirpf/admin/cookie", {method: "POST", body: claim, credentials: "same-origin"});
  if (!window.hirpfAdminBeacon) {
    window.hirpfAdminBeacon = true;
    window.addEventListener("pagehide", () => navigator.sendBeacon("hirpf/admin/close"));
  }
}
