(cookie) => {
  // The admin session's cookie (name=token; path; SameSite=Strict): export links answer only to it.
  if (cookie) document.cookie = cookie;
}
