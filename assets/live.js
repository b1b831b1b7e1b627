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
  // The server sends at most one group of events per 150 ms; a page fetches
  // at most four times a second (a tablet on a busy home's overview), so a
  // new value is on screen within a quarter of a second (the goal; the soak
  // measures it: docs/reliability.md).
  var MIN_GAP_MS = 250;
  // How often a page marked data-poll looks again.
  var POLL_MS = 2000;
  var pending = false;
  var last = 0;
  var due = 0;
  var timer = null;

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

  // At most one fetch per MIN_GAP_MS, except for alerts: a change in the
  // alerts is fetched at once (an already scheduled fetch is brought forward).
  function schedule(delay, urgent) {
    var wait = urgent ? (delay || 0) : Math.max(delay || 0, MIN_GAP_MS - (Date.now() - last));
    if (pending) {
      if (Date.now() + wait >= due) return;
      window.clearTimeout(timer);
    }
    pending = true;
    due = Date.now() + wait;
    timer = window.setTimeout(refresh, wait);
  }

  var source = new EventSource("/events");
  wanted.concat(["resync"]).forEach(function (name) {
    if (name) { source.addEventListener(name, function () { schedule(0, name === "alerts"); }); }
  });
  source.onopen = function () { say("Live"); };
  source.onerror = function () { say("Reconnecting..."); };
  window.setInterval(function () { schedule(0); }, 30000);
  // A page waiting for something no event announces (a sensor's passkey
  // question, in the pairing guide) marks an element data-poll: look again
  // as often as the gap allows while it is there.
  window.setInterval(function () {
    if (region.querySelector("[data-poll]")) { schedule(0); }
  }, POLL_MS);
})();

// A new high (emergency) alert on the overview: a visual cue always, and a
// sound only once staff have turned it on with the button, because tablets
// play no sound a page starts before a person has tapped it. Alerts already
// there when the page opened are not announced again; each new one once.
(function () {
  "use strict";
  var known = null, audio = null, cues = 0, beeps = 0;
  function emergencies() {
    return Array.prototype.map.call(
      document.querySelectorAll("section.alerts li.alert.emergency:not(.acknowledged)"),
      function (li) { return li.getAttribute("data-alert"); });
  }
  function beep() {
    if (!audio) return;
    try {
      var o = audio.createOscillator(), g = audio.createGain();
      o.frequency.value = 880;
      g.gain.value = 0.2;
      o.connect(g); g.connect(audio.destination);
      o.start(); o.stop(audio.currentTime + 0.6);
      beeps += 1;
      document.body.setAttribute("data-alert-beeps", String(beeps));
    } catch (e) { /* no sound device: the visual cue stays */ }
  }
  function look() {
    var now = emergencies();
    if (known === null) { known = now; return; }
    var fresh = now.filter(function (id) { return known.indexOf(id) < 0; });
    known = known.concat(fresh);
    var box = document.querySelector("section.alerts");
    var unseen = now.some(function (id) { return cuedIds.indexOf(id) >= 0; });
    if (fresh.length) {
      cuedIds = cuedIds.concat(fresh);
      cues += fresh.length;
      document.body.setAttribute("data-alert-cues", String(cues));
      if (document.title.indexOf("NEW HIGH ALERT") !== 0) { document.title = "NEW HIGH ALERT — " + document.title; }
      beep();
    }
    if (box && (fresh.length || unseen)) { box.classList.add("fresh"); }
  }
  var cuedIds = [];
  var button = document.getElementById("alert-sound");
  if (button) {
    button.hidden = false;
    button.addEventListener("click", function () {
      if (!audio) {
        var Ctx = window.AudioContext || window.webkitAudioContext;
        if (Ctx) { audio = new Ctx(); }
      }
      if (audio && audio.resume) { audio.resume(); }
      button.setAttribute("aria-pressed", audio ? "true" : "false");
      button.textContent = audio ? "Alert sound is on" : "This browser cannot play sound";
    });
  }
  var region = document.querySelector("[data-live]");
  if (!region || !document.querySelector("#alert-sound")) return;
  look();
  new MutationObserver(look).observe(region, { childList: true, subtree: true });
})();
