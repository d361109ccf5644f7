(function () {
  "use strict";
  var PAGE = 300;
  var KIND_LABEL = {reason: "[REASON]", act: "[ACT]", answer: "[ANSWER]", context: "context"};
  function el(tag, cls, text) {
    var e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined && text !== null) e.textContent = String(text);
    return e;
  }
  function option(select, value, label) {
    var o = el("option", null, label); o.value = value; select.appendChild(o);
  }
  function uniq(values) {
    var seen = {}, out = [];
    values.forEach(function (v) { if (v !== null && v !== undefined && !seen[v]) { seen[v] = 1; out.push(v); } });
    return out.sort();
  }
  function badge(ok) { return el("span", "td-badge " + (ok ? "td-ok" : "td-fail"), ok ? "success" : "fail"); }

  function Viewer(root) {
    var data = JSON.parse(document.getElementById(root.getAttribute("data-source")).textContent);
    this.data = data; this.root = root; this.shown = PAGE; this.current = null;
    root.textContent = "";
    var side = el("div", "td-side"), filters = el("div", "td-filters");
    this.search = el("input"); this.search.type = "search"; this.search.placeholder = "search task or trajectory id";
    filters.appendChild(this.search);
    this.selects = {};
    var self = this, T = data.trajectories;
    function choices(key) {
      return uniq(T.map(function (t) { return t[key]; })).map(function (v) { return [v, v]; });
    }
    var fields = [["run", "all runs", data.runs.map(function (r, i) { return [String(i), r]; })],
                  ["teacher", "all teachers", choices("teacher")],
                  ["ok", "any outcome", [["1", "success"], ["0", "fail"]]],
                  ["cat", "all categories", choices("cat")]];
    fields.forEach(function (f) {
      var s = el("select"); s.setAttribute("data-filter", f[0]);
      option(s, "", f[1]); f[2].forEach(function (p) { option(s, p[0], p[1]); });
      self.selects[f[0]] = s; filters.appendChild(s);
      s.addEventListener("change", function () { self.shown = PAGE; self.renderList(); });
    });
    this.search.addEventListener("input", function () { self.shown = PAGE; self.renderList(); });
    this.count = el("div", "td-count"); filters.appendChild(this.count);
    this.list = el("ul", "td-list");
    this.more = el("button", "td-more", "show more");
    this.more.addEventListener("click", function () { self.shown += PAGE; self.renderList(); });
    side.appendChild(filters); side.appendChild(this.list); side.appendChild(this.more);
    this.detail = el("div", "td-detail");
    root.appendChild(side); root.appendChild(this.detail);
    var wanted = (location.hash.match(/traj=([^&]+)/) || [])[1], first = data.first || 0;
    T.forEach(function (t, i) { if (wanted && t.id.indexOf(decodeURIComponent(wanted)) === 0) first = i; });
    this.shown = Math.max(PAGE, first + 1);
    this.renderList();
    this.show(first);
    var picked = this.list.querySelector("li.td-sel");  // scroll the list only, never the page
    if (picked) this.list.scrollTop = Math.max(0, picked.offsetTop - 60);
  }

  Viewer.prototype.matches = function (t) {
    var s = this.selects, q = this.search.value.trim().toLowerCase();
    if (s.run.value !== "" && String(t.run) !== s.run.value) return false;
    if (s.teacher.value !== "" && t.teacher !== s.teacher.value) return false;
    if (s.ok.value !== "" && (t.ok ? "1" : "0") !== s.ok.value) return false;
    if (s.cat.value !== "" && t.cat !== s.cat.value) return false;
    return !q || t.task.toLowerCase().indexOf(q) >= 0 || t.id.indexOf(q) === 0;
  };

  Viewer.prototype.renderList = function () {
    var self = this, T = this.data.trajectories, hits = [];
    for (var i = 0; i < T.length; i++) if (this.matches(T[i])) hits.push(i);
    this.list.textContent = "";
    hits.slice(0, this.shown).forEach(function (i) {
      var t = T[i], li = el("li");
      li.setAttribute("data-index", i);
      if (i === self.current) li.className = "td-sel";
      var top = el("div");
      top.appendChild(el("span", "td-task", t.task));
      top.appendChild(document.createTextNode(" "));
      top.appendChild(badge(t.ok)); li.appendChild(top);
      li.appendChild(el("div", "td-meta", t.teacher + " · " + self.data.runs[t.run] + (t.cat ? " · " + t.cat : "") +
                        " · " + t.usage.steps + " steps"));
      li.addEventListener("click", function () { self.show(i); });
      self.list.appendChild(li);
    });
    this.count.textContent = hits.length + " of " + T.length + " trajectories" +
      (hits.length > this.shown ? " (showing " + this.shown + ")" : "");
    this.more.style.display = hits.length > this.shown ? "" : "none";
  };

  Viewer.prototype.show = function (i) {
    var t = this.data.trajectories[i], d = this.detail, self = this;
    this.current = i;
    Array.prototype.forEach.call(this.list.children, function (li) {
      li.className = Number(li.getAttribute("data-index")) === i ? "td-sel" : "";
    });
    d.textContent = "";
    d.setAttribute("data-trajectory", t.id);
    var head = el("div", "td-head"); head.appendChild(el("h3", null, t.task));
    var kv = el("div", "td-kv");
    [["id", t.id], ["teacher", t.teacher], ["run", this.data.runs[t.run]], ["env", t.env], ["split", t.split],
     ["category", t.cat], ["difficulty", t.diff], ["strategy", t.strategy],
     ["composed from", (t.from || []).join(", ")], ["skills", (t.skills || []).join(", ")]].forEach(function (p) {
      if (p[1] === null || p[1] === undefined || p[1] === "") return;
      var s = el("span", null, p[0] + ": "); s.appendChild(el("b", null, p[1])); kv.appendChild(s);
    });
    head.appendChild(kv); d.appendChild(head);
    d.appendChild(this.outcome(t));
    var turn = 0, klMax = 0;
    t.msgs.forEach(function (m) {
      (m.kl || []).forEach(function (r) { klMax = Math.max(klMax, r[2]); });
    });
    t.msgs.forEach(function (m) {
      if (m.r === "assistant") turn += 1;
      d.appendChild(self.message(m, turn, klMax));
    });
  };

  Viewer.prototype.outcome = function (t) {
    var box = el("div", "td-outcome " + (t.ok ? "td-ok" : "td-fail"));
    var line = el("div"); line.appendChild(badge(t.ok));
    line.appendChild(document.createTextNode(" reward " + t.reward + " · answer: "));
    line.appendChild(el("code", null, t.answer === null ? "(none)" : t.answer));
    box.appendChild(line);
    if (t.detail) box.appendChild(el("div", "td-kv", "verifier: " + t.detail));
    if (t.error) box.appendChild(el("div", "td-kv", "error: " + t.error));
    var table = el("table", "td-usage"), row = el("tr");
    Object.keys(t.usage).forEach(function (k) {
      row.appendChild(el("td", null, k)); row.appendChild(el("td", null, t.usage[k]));
    });
    table.appendChild(row); box.appendChild(table);
    return box;
  };

  Viewer.prototype.message = function (m, turn, klMax) {
    if (m.r === "system" || m.r === "user") {
      var text = m.r === "system" ? this.data.prompts[m.s] : m.t;
      var det = el("details", "td-msg td-prompt td-" + m.r);
      det.appendChild(el("summary", null, m.r + " · " + text.split("\n")[0].slice(0, 160)));
      det.appendChild(el("pre", "td-text", text));
      return det;
    }
    if (m.r === "tool") {
      var obs = el("div", "td-msg td-obs");
      obs.setAttribute("data-role", "tool");
      obs.appendChild(el("div", "td-role", "observation" + (m.n ? " · " + m.n : "")));
      obs.appendChild(el("pre", "td-text", m.t));
      return obs;
    }
    var msg = el("div", "td-msg td-assistant"), pre = el("pre", "td-text");
    msg.appendChild(el("div", "td-role", "assistant · turn " + turn));
    m.p.forEach(function (part) {
      if (!part[0]) { pre.appendChild(document.createTextNode(part[1])); return; }
      var s = el("span", "span span-" + part[0], part[1]);
      s.setAttribute("data-kind", part[0]); s.title = KIND_LABEL[part[0]] || part[0];
      pre.appendChild(s);
    });
    msg.appendChild(pre);
    if (m.kl) msg.appendChild(this.klOverlay(m, klMax));
    return msg;
  };

  // The distillation signal: each sampled token shaded by its KL(student || teacher), darkest at the
  // trajectory's largest; the value is the token's tooltip.
  Viewer.prototype.klOverlay = function (m, klMax) {
    var text = m.p.map(function (part) { return part[1]; }).join(""), box = el("div", "td-kl");
    var sum = m.kl.reduce(function (a, r) { return a + r[2]; }, 0);
    box.appendChild(el("div", "td-role", "token KL(student \u2016 teacher) \u00b7 mean " +
                       (sum / m.kl.length).toFixed(3) + " \u00b7 max in trajectory " + klMax.toFixed(3)));
    var pre = el("pre", "td-text"), pos = 0;
    m.kl.forEach(function (r) {
      if (r[0] < pos) return;
      if (r[0] > pos) pre.appendChild(document.createTextNode(text.slice(pos, r[0])));
      var s = el("span", "td-kl-token", text.slice(r[0], r[1]));
      s.style.backgroundColor = "rgba(214, 39, 40, " + (klMax > 0 ? r[2] / klMax : 0).toFixed(3) + ")";
      s.title = "KL " + r[2].toFixed(4); s.setAttribute("data-kl", r[2]);
      pre.appendChild(s); pos = r[1];
    });
    if (pos < text.length) pre.appendChild(document.createTextNode(text.slice(pos)));
    box.appendChild(pre);
    return box;
  };

  function start() {
    Array.prototype.forEach.call(document.querySelectorAll(".td-viewer[data-source]"), function (root) {
      new Viewer(root);
    });
  }
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start); else start();
})();
