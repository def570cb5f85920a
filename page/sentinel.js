// Sentinel's status page: live updates without a reload. Listens to /api/stream and, when
// something changed, fetches the page again and swaps in its <main>. The server renders and
// escapes everything; this script never builds HTML from event data.
(function () {
  "use strict";
  if (!window.EventSource || !window.fetch || !window.DOMParser) return;
  var live = document.getElementById("live");
  var pending = null;
  var inFlight = false;
  var again = false;

  function setLive(state, text) {
    if (!live) return;
    live.setAttribute("data-state", state);
    live.textContent = text;
  }

  function refresh() {
    if (inFlight) { again = true; return; }
    inFlight = true;
    fetch(window.location.pathname, { headers: { "Accept": "text/html" }, cache: "no-store" })
      .then(function (response) {
        if (!response.ok) throw new Error("HTTP " + response.status);
        return response.text();
      })
      .then(function (html) {
        var next = new DOMParser().parseFromString(html, "text/html");
        var fresh = next.getElementById("main");
        var current = document.getElementById("main");
        if (fresh && current) {
          // Keep open timelines open across the swap.
          var open = {};
          current.querySelectorAll("article[data-id] details[open]").forEach(function (d) {
            open[d.closest("article").getAttribute("data-id")] = true;
          });
          fresh.querySelectorAll("article[data-id]").forEach(function (a) {
            if (open[a.getAttribute("data-id")]) {
              var details = a.querySelector("details");
              if (details) details.open = true;
            }
          });
          current.replaceWith(document.adoptNode(fresh));
          document.title = next.title;
        }
        setLive("live", "live · updated " + new Date().toLocaleTimeString());
      })
      .catch(function () { setLive("reconnecting", "update failed, retrying"); })
      .then(function () {
        inFlight = false;
        if (again) { again = false; schedule(); }
      });
  }

  // Coalesce bursts of events (an incident moves through several states at once).
  function schedule() {
    if (pending) return;
    pending = setTimeout(function () { pending = null; refresh(); }, 150);
  }

  // Relative times ("4 min ago") age between swaps: recount them from their datetime, in the
  // server's words (see `When` in src/web/page.rs); the exact time stays in the title.
  function durationWords(ms) {
    var s = Math.floor(ms / 1000);
    if (s < 60) return s + " s";
    if (s < 3600) return Math.floor(s / 60) + " min";
    if (s < 86400) {
      var m = Math.floor((s % 3600) / 60);
      return Math.floor(s / 3600) + " h" + (m ? " " + m + " min" : "");
    }
    var h = Math.floor((s % 86400) / 3600);
    return Math.floor(s / 86400) + " d" + (h ? " " + h + " h" : "");
  }
  function recount() {
    var now = Date.now();
    document.querySelectorAll("time[data-relative]").forEach(function (t) {
      var at = Date.parse(t.getAttribute("datetime"));
      if (isNaN(at)) return;
      var ms = now - at;
      t.textContent = ms > -1000 && ms < 5000 ? "just now"
        : ms < 0 ? "in " + durationWords(-ms) : durationWords(ms) + " ago";
    });
  }
  setInterval(recount, 15000);

  var source = new EventSource("/api/stream");
  source.addEventListener("open", function () { setLive("live", "live"); schedule(); });
  source.addEventListener("error", function () { setLive("reconnecting", "reconnecting…"); });
  ["incident", "status", "resync"].forEach(function (kind) {
    source.addEventListener(kind, schedule);
  });
})();
