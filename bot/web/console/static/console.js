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
        legend: {bottom: 0},
        series: [{type: "pie", radius: ["30%", "58%"], center: ["50%", "45%"], label: {formatter: "{b}\n{c} 人"},
                  data: rows.map(function (r) { return {name: r.label, value: r.count}; })}]
      };
    },
    stacked: function (d) {
      return {
        color: COLORS, tooltip: {trigger: "axis"}, legend: {bottom: 0, type: "scroll"},
        grid: {left: 40, right: 16, top: 16, bottom: 56},
        xAxis: {type: "category", data: d.days}, yAxis: {type: "value", minInterval: 1},
        series: d.series.map(function (s) { return {name: s.name, type: "bar", stack: "all", data: s.data}; })
      };
    },
    sankey: function (flows) {
      return {
        color: COLORS, tooltip: {trigger: "item"},
        series: [{type: "sankey", data: flows.nodes, links: flows.links, emphasis: {focus: "adjacency"},
                  lineStyle: {color: "gradient", curveness: 0.5}, label: {fontSize: 12}}]
      };
    },
    tiers: function (d) {
      // Per value tier, sent vs held out: conversion (%) on the left, revenue per customer (元) on the right.
      function pair(values, index) {
        return ["发送组", "对照组"].map(function (name, i) {
          return {name: name, type: "bar", xAxisIndex: index, yAxisIndex: index, data: values[i],
                  label: {show: true, position: "top", fontSize: 11}};
        });
      }
      return {
        color: ["#2f6fed", "#8993a4"], tooltip: {trigger: "axis"}, legend: {bottom: 0, data: ["发送组", "对照组"]},
        title: [{text: "转化率 %", left: "22%", top: 0, textAlign: "center", textStyle: {fontSize: 13}},
                {text: "人均收入 元", left: "74%", top: 0, textAlign: "center", textStyle: {fontSize: 13}}],
        grid: [{left: "6%", width: "38%", top: 48, bottom: 56}, {left: "56%", width: "38%", top: 48, bottom: 56}],
        xAxis: [{type: "category", data: d.tiers, gridIndex: 0, axisLabel: {interval: 0}},
                {type: "category", data: d.tiers, gridIndex: 1, axisLabel: {interval: 0}}],
        yAxis: [{type: "value", gridIndex: 0}, {type: "value", gridIndex: 1}],
        series: pair(d.conversion, 0).concat(pair(d.revenue, 1))
      };
    },
    report: function (r) {
      // Two panels with their own axes: a share in percent and an amount in 元 do not share a scale.
      var groups = ["发送组", "对照组"];
      function bars(values, index) {
        return {type: "bar", xAxisIndex: index, yAxisIndex: index, colorBy: "data", barWidth: "40%",
                data: values, label: {show: true, position: "top", formatter: function (p) { return p.value.toFixed(2); }}};
      }
      return {
        color: ["#2f6fed", "#8993a4"], tooltip: {trigger: "item"},
        title: [{text: "转化率 %", left: "22%", top: 0, textAlign: "center", textStyle: {fontSize: 13}},
                {text: "人均收入 元", left: "74%", top: 0, textAlign: "center", textStyle: {fontSize: 13}}],
        grid: [{left: "6%", width: "38%", top: 48, bottom: 28}, {left: "56%", width: "38%", top: 48, bottom: 28}],
        xAxis: [{type: "category", data: groups, gridIndex: 0}, {type: "category", data: groups, gridIndex: 1}],
        yAxis: [{type: "value", gridIndex: 0}, {type: "value", gridIndex: 1}],
        series: [bars(r.conversion, 0), bars(r.revenue, 1)]
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
      // Marked once drawn (animation included), so a browser test or a screenshot waits for it.
      chart.on("finished", function () { el.setAttribute("data-rendered", "1"); });
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
    var audienceKeys = (form.getAttribute("data-audience-keys") || "").split(" ");
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
      if (audienceKeys.indexOf(event.target.name) >= 0 && event.target.type !== "checkbox") {
        clearTimeout(timer); timer = setTimeout(refresh, 400);
      }
    });
    refresh();
  }

  // A form that changes something at once (a rule's 删除) asks first; the text comes from data-confirm.
  function confirmForms() {
    Array.prototype.forEach.call(document.querySelectorAll("form[data-confirm]"), function (form) {
      form.addEventListener("submit", function (event) {
        if (!window.confirm(form.getAttribute("data-confirm"))) { event.preventDefault(); }
      });
    });
  }

  document.addEventListener("DOMContentLoaded", function () { drawCharts(); liveCount(); confirmForms(); });
})();
