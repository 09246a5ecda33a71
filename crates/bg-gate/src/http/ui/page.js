"use strict";
// Follows the change stream of the gate that served this page and renders
// its data again on every change (and every 5 s, for what moves no
// generation: deploy records, the lease, gates' reports). Only read routes;
// store text only ever goes through textContent.
(function () {
  const app = document.body.getAttribute("data-bg-app");
  let since = Number(document.body.getAttribute("data-bg-follow")) || 0;
  const NONE = "\u2014";
  const status = document.getElementById("follow");

  function node(tag, text, attrs) {
    const e = document.createElement(tag);
    if (text !== null && text !== undefined) e.textContent = String(text);
    for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
    return e;
  }
  function append(parent, children) {
    for (const c of children) {
      parent.appendChild(typeof c === "string" ? document.createTextNode(c) : c);
    }
    return parent;
  }
  function fill(id, children) {
    document.getElementById(id).replaceChildren(...children);
  }
  function swatch(colour) {
    return node("span", null, { class: "swatch " + colour, "aria-hidden": "true" });
  }
  function time(ms) {
    return new Date(ms).toISOString();
  }
  function dur(ms) {
    const s = Math.floor(ms / 1000);
    if (ms < 1000) return ms + " ms";
    if (ms < 60000) return s + " s";
    if (ms < 3600000) return Math.floor(s / 60) + " min " + (s % 60) + " s";
    return Math.floor(s / 3600) + " h " + Math.floor((s % 3600) / 60) + " min";
  }
  function orNone(v) {
    return v === null || v === undefined ? NONE : String(v);
  }
  function row(cells) {
    return append(node("tr"), cells);
  }
  function table(heads, rows, attrs, caption) {
    const t = node("table", null, attrs);
    if (caption) t.appendChild(node("caption", caption));
    const head = row(heads.map((h) => node("th", h, { scope: "col" })));
    append(t, [append(node("thead"), [head]), append(node("tbody"), rows)]);
    return t;
  }
  function none(columns, text) {
    return row([node("td", text, { colspan: String(columns) })]);
  }

  function live(d) {
    const st = d.state;
    if (!st) {
      return [append(node("p", null, { class: "live" }), [
        node("strong", "none", { "data-bg-live": "" }),
        ": the app is not initialised, so no colour is live.",
      ])];
    }
    const made = "Made live at " + time(st.changed_at_ms) + " by " + st.changed_by +
      (st.reason === null || st.reason === undefined ? "" : ": " + st.reason);
    return [
      append(node("p", null, { class: "live" }), [
        swatch(st.active),
        node("strong", st.active, { "data-bg-live": "" }),
        " ",
        node("span", "live", { class: "tag" }),
        " at generation ",
        node("span", st.generation, { "data-bg-generation": "" }),
      ]),
      node("p", made),
    ];
  }

  function colours(d) {
    const rows = d.state
      ? d.state.colours.map((c) => row([
        append(node("th", null, { scope: "row" }), [swatch(c.colour), c.colour]),
        node("td", c.live ? "live" : "idle"),
        node("td", orNone(c.deployed), { "data-bg-deployed": c.colour }),
        node("td", orNone(c.last_live), { "data-bg-last-live": c.colour }),
      ]))
      : [none(4, "No state yet.")];
    return [table(["Colour", "Status", "Deployed", "Last live"], rows)];
  }

  function gates(d) {
    const rows = d.gates.map((g) => row([
      node("th", g.gate_id, { scope: "row" }),
      append(node("td"), [swatch(g.colour), g.colour]),
      node("td", g.version),
      node("td", g.applied_generation),
      node("td", g.view_age_ms === null || g.view_age_ms === undefined ? NONE : dur(g.view_age_ms)),
      node("td", orNone(g.websockets)),
      node("td", g.lb_sources.length ? g.lb_sources.join(", ") : NONE),
      node("td", dur(g.seen_ms_ago) + " ago"),
    ]));
    if (!rows.length) rows.push(none(8, "No gate has reported its presence."));
    const heads = ["Gate", "Colour", "Version", "Generation", "View age", "Websockets",
      "Load balancers", "Reported"];
    return [table(heads, rows)];
  }

  function drain(d) {
    const draining = d.gates.filter((g) => g.draining).map((g) =>
      g.gate_id + " (" + g.colour + ") is moving its websockets to the live colour, " +
      (g.websockets === null || g.websockets === undefined ? "an unknown number of" : g.websockets) +
      " still open");
    const text = draining.length ? draining.join("; ") + "." : "No drain in progress.";
    return [node("p", text, { "data-bg-drain": "" })];
  }

  function lease(d) {
    const l = d.lease;
    if (!l) return [node("p", "Nobody holds the deploy lease.")];
    return [append(node("p"), [
      "Held by ",
      node("strong", l.holder, { "data-bg-lease-holder": "" }),
      "; it lapses at ",
      node("time", time(l.expires_at_ms), { "data-bg-lease-expires": "" }),
      " unless renewed (in " + dur(Math.max(0, l.expires_at_ms - d.now_ms)) + ").",
    ])];
  }

  function history(d) {
    const rows = d.history.map((e) => row([
      node("td", time(e.at_ms)),
      node("td", e.generation),
      node("td", e.what),
      node("td", e.actor),
      node("td", orNone(e.reason)),
    ]));
    const heads = ["Time", "Generation", "Event", "Actor", "Reason"];
    const caption = "The last 20 events, newest first";
    return [table(heads, rows, { id: "history" }, caption)];
  }

  function render(d) {
    fill("live", live(d));
    fill("colours", colours(d));
    fill("gates", gates(d));
    fill("drain", drain(d));
    fill("lease", lease(d));
    fill("events", history(d));
  }

  function say(text, lost) {
    status.textContent = text;
    status.className = lost ? "lost" : "";
  }

  async function refresh() {
    const r = await fetch("ui/data", { cache: "no-store", headers: { Accept: "application/json" } });
    if (!r.ok) throw new Error("the gate answered " + r.status);
    const d = await r.json();
    render(d);
    say("Following changes through gate " + d.gate.gate_id + " (" + d.gate.colour + ", " +
      d.gate.version + "); updated at " + time(d.now_ms) +
      ". Read-only: switching stays with bg-ctl and CI.", false);
  }

  function sleep(ms) {
    return new Promise((resolve) => setTimeout(resolve, ms));
  }

  async function follow() {
    const changes = "api/v1/apps/" + encodeURIComponent(app) + "/changes?timeout_ms=25000&since=";
    let pause = 0;
    for (;;) {
      try {
        const r = await fetch(changes + since, { cache: "no-store" });
        if (!r.ok) throw new Error("the change stream answered " + r.status);
        const c = await r.json();
        if (c.changed) {
          if (typeof c.generation === "number") since = c.generation;
          await refresh();
        }
        pause = 0;
      } catch (e) {
        pause = Math.min(pause ? pause * 2 : 500, 10000);
        say("Lost the gate (" + e.message + "); trying again in " + dur(pause) +
          ". What is shown may be out of date.", true);
        await sleep(pause);
      }
    }
  }

  setInterval(() => { refresh().catch(() => {}); }, 5000);
  refresh().catch(() => {});
  follow();
})();
