// Keyboard shortcuts: a key clicks the button whose data-key it is (a, b, t, x, s; r for a ranking).
// Keys typed into the rationale or a rank menu are left alone.
document.addEventListener("keydown", function (e) {
  if (e.ctrlKey || e.metaKey || e.altKey || e.repeat) return;
  var tag = e.target && e.target.tagName;
  if (tag === "TEXTAREA" || tag === "INPUT" || tag === "SELECT") return;
  var buttons = document.querySelectorAll("button[data-key]");
  for (var i = 0; i < buttons.length; i++) {
    if (buttons[i].getAttribute("data-key") === e.key.toLowerCase()) {
      e.preventDefault();
      buttons[i].click();
      return;
    }
  }
});
