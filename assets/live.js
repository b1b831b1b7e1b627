// carehub live updates. The pages work without this file (they reload themselves
// every 30 s through a <noscript> refresh). With it, the element marked data-live
// is re-fetched when the server's event stream (/events) says something it shows
// has changed, and every 30 s so that ages and STALE marks move on with the clock.
//
// The pairing page's countdown lives here too: the Content-Security-Policy
// (default-src 'self') allows no inline script on any page.

// Counts the pairing window down each second from what the server said was left
// (the tablet's clock may differ from the gateway's), and reloads the page when
// it closes. The page does not refresh itself otherwise, so that typing survives.
(function () {
  "use strict";
  var el = document.getElementById("pairing-countdown");
  if (!el) return;
  var left = Number(el.dataset.secondsLeft), start = performance.now();
  function tick() {
    var s = Math.max(0, Math.ceil(left - (performance.now() - start) / 1000));
    el.textContent = (s >= 60 ? Math.floor(s / 60) + " min " + (s % 60) : s) + " s";
    if (s === 0) { location.reload(); } else { setTimeout(tick, 1000); }
  }
  setTimeout(tick, 1000);
})();

(function () {
  "use strict";
  var region = document.querySelector("[data-live]");
  if (!region || !window.EventSource || !window.fetch || !window.DOMParser) return;
  var wanted = (region.getAttribute("data-live") || "").split(" ");
  var status = document.getElementById("live-status");
  var MIN_GAP_MS = 5000;
  var pending = false;
  var last = 0;

  function say(text) { if (status) status.textContent = text; }

  function keyboardInRegion() {
    return region.contains(document.activeElement) && document.activeElement !== region;
  }

  function refresh() {
    pending = false;
    // Never replace what the keyboard is on: try again shortly.
    if (keyboardInRegion()) {
      schedule(5000);
      return;
    }
    last = Date.now();
    // X-Carehub-Live: this request is the page's, not a person's, so it does not
    // keep the session alive. When the session has ended the answer is the
    // sign-in page: reload, so that the residents' values leave the screen
    // instead of staying there, no longer updated, looking current.
    fetch(window.location.href, { credentials: "same-origin", headers: { "Accept": "text/html", "X-Carehub-Live": "1" } })
      .then(function (r) {
        if (r.redirected && new URL(r.url).pathname === "/login") { window.location.reload(); throw new Error("signed out"); }
        if (!r.ok) { throw new Error("HTTP " + r.status); }
        return r.text();
      })
      .then(function (text) {
        // The keyboard may have moved into the region while the page was
        // fetched: replacing it now would throw the focus back to the top.
        if (keyboardInRegion()) { schedule(5000); return; }
        var doc = new DOMParser().parseFromString(text, "text/html");
        var fresh = doc.querySelector("[data-live]");
        if (fresh) { region.innerHTML = fresh.innerHTML; }
        var stamp = doc.getElementById("updated");
        var mine = document.getElementById("updated");
        if (stamp && mine) { mine.innerHTML = stamp.innerHTML; }
        say("Live");
      })
      .catch(function () { say("Live updates paused: reload the page"); });
  }

  function schedule(delay) {
    if (pending) return;
    pending = true;
    var wait = Math.max(delay || 0, MIN_GAP_MS - (Date.now() - last));
    window.setTimeout(refresh, wait);
  }

  var source = new EventSource("/events");
  wanted.concat(["resync"]).forEach(function (name) {
    if (name) { source.addEventListener(name, function () { schedule(0); }); }
  });
  source.onopen = function () { say("Live"); };
  source.onerror = function () { say("Reconnecting..."); };
  window.setInterval(function () { schedule(0); }, 30000);
  // A page waiting for something no event announces (a sensor's passkey
  // question, in the pairing guide) marks an element data-poll: look again
  // as often as the gap allows while it is there.
  window.setInterval(function () {
    if (region.querySelector("[data-poll]")) { schedule(0); }
  }, MIN_GAP_MS);
})();
