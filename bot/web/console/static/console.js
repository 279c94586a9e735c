// The console's charts and the broadcast builder's live count. Data comes from
// <script type="application/json"> elements rendered by the server; nothing is loaded from elsewhere.
(function () {
  "use strict";
  var COLORS = ["#2f6fed", "#36b37e", "#ffab00", "#ff5630", "#6554c0", "#00b8d9", "#8993a4", "#f78fb3"];

  function data(id) {
    var el = document.getElementById(id);
    return el ? JSON.parse(el.textContent) : null;
  }

  var builders = {
    bar: function (rows) {
      return {
        color: COLORS, tooltip: {}, grid: {left: 48, right: 16, top: 16, bottom: 48},
        xAxis: {type: "category", data: rows.map(function (r) { return r.label; }), axisLabel: {interval: 0}},
        yAxis: {type: "value", name: "人数"},
        series: [{type: "bar", data: rows.map(function (r) { return r.count; }), label: {show: true, position: "top"}}]
      };
    },
    pie: function (rows) {
      return {
        color: COLORS, tooltip: {trigger: "item", formatter: "{b}: {c} 人 ({d}%)"},
        legend: {orient: "vertical", left: 0, top: "middle"},
        series: [{type: "pie", radius: ["35%", "65%"], center: ["62%", "50%"],
                  data: rows.map(function (r) { return {name: r.label, value: r.count}; })}]
      };
    },
    sankey: function (flows) {
      return {
        color: COLORS, tooltip: {trigger: "item"},
        series: [{type: "sankey", data: flows.nodes, links: flows.links, emphasis: {focus: "adjacency"},
                  lineStyle: {color: "gradient", curveness: 0.5}, label: {fontSize: 12}}]
      };
    },
    report: function (r) {
      return {
        color: ["#2f6fed", "#8993a4"], tooltip: {trigger: "axis"}, legend: {data: ["发送组", "对照组"]},
        grid: {left: 56, right: 56, top: 36, bottom: 28},
        xAxis: {type: "category", data: ["转化率 %", "人均收入 元"]},
        yAxis: {type: "value"},
        series: [
          {name: "发送组", type: "bar", data: [r.conversion[0], r.revenue[0]], label: {show: true, position: "top", formatter: function (p) { return p.value.toFixed(2); }}},
          {name: "对照组", type: "bar", data: [r.conversion[1], r.revenue[1]], label: {show: true, position: "top", formatter: function (p) { return p.value.toFixed(2); }}}
        ]
      };
    }
  };

  function drawCharts() {
    if (typeof echarts === "undefined") { return; }
    document.querySelectorAll("[data-chart]").forEach(function (el) {
      var rows = data(el.getAttribute("data-source"));
      var build = builders[el.getAttribute("data-chart")];
      if (!rows || !build) { return; }
      var chart = echarts.init(el, null, {renderer: "canvas"});
      chart.setOption(build(rows));
      window.addEventListener("resize", function () { chart.resize(); });
    });
  }

  // The builder's live count: the audience fields as a query string, asked for after each change.
  function liveCount() {
    var form = document.getElementById("builder");
    if (!form) { return; }
    var url = form.getAttribute("data-count-url");
    var total = document.getElementById("live-total");
    var table = document.getElementById("live-count");
    var error = document.getElementById("live-error");
    var audienceKeys = ["value_tiers", "rfm_segments", "stages", "engagement", "activity", "tag", "owner", "has_ordered"];
    var timer = null, seq = 0;

    function query() {
      var params = new URLSearchParams();
      new FormData(form).forEach(function (value, key) {
        if (audienceKeys.indexOf(key) >= 0 && value !== "") {
          params.append(key, value);
        }
      });
      return params.toString();
    }

    function render(body) {
      total.textContent = body.total;
      while (table.rows.length > 1) { table.deleteRow(1); }
      body.per_tier.forEach(function (row) {
        var tr = table.insertRow();
        tr.insertCell().textContent = row.label;
        tr.insertCell().textContent = row.count;
      });
    }

    function refresh() {
      var mine = ++seq;
      fetch(url + "?" + query(), {headers: {"Accept": "application/json"}, credentials: "same-origin"})
        .then(function (response) { return response.json().then(function (body) { return [response.ok, body]; }); })
        .then(function (result) {
          if (mine !== seq) { return; }
          error.hidden = result[0];
          if (result[0]) { render(result[1]); } else { error.textContent = result[1].error; total.textContent = "?"; }
        })
        .catch(function () { if (mine === seq) { error.hidden = false; error.textContent = "人数暂时无法获取"; } });
    }

    form.addEventListener("change", function () { clearTimeout(timer); timer = setTimeout(refresh, 150); });
    form.addEventListener("input", function (event) {
      if (event.target.name === "tag" || event.target.name === "owner") { clearTimeout(timer); timer = setTimeout(refresh, 400); }
    });
    refresh();
  }

  document.addEventListener("DOMContentLoaded", function () { drawCharts(); liveCount(); });
})();
