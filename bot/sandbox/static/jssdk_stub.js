/* The sandbox's stand-in for WeCom's jweixin script: wx.config / wx.agentConfig are checked against
   the tickets the sandbox issued, wx.invoke answers like the WeCom client, and every call is kept in
   window.__wecomCalls and reported to the sandbox. The current external contact is the page URL's
   sandbox_contact parameter (WeCom takes it from the chat the sidebar is opened beside); where the page
   was opened (getContext's entry) is its sandbox_entry parameter, single_chat_tools by default. */
(function () {
  "use strict";
  var ORIGIN = "__SANDBOX_ORIGIN__";
  var calls = (window.__wecomCalls = []);
  var readyFns = [], errorFns = [], configured = null, agentConfigured = false;

  function record(api, args) {
    calls.push({ api: api, args: args });
    fetch(ORIGIN + "/_sandbox/jssdk/calls", {
      method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ api: api, args: args, page: location.href.split("#")[0] })
    }).catch(function () {});
  }
  function verify(kind, cfg) {
    return fetch(ORIGIN + "/_sandbox/jssdk/verify", {
      method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ kind: kind, url: location.href.split("#")[0], noncestr: cfg.nonceStr,
                             timestamp: cfg.timestamp, signature: cfg.signature })
    }).then(function (r) { return r.json(); }).then(function (j) { return !!j.ok; })
      .catch(function () { return false; });
  }
  var SINGLE_CUSTOMER = ["single_chat_tools", "single_kf_tools", "contact_profile"];
  function param(name) {
    return new URLSearchParams(location.search).get(name) || "";
  }
  function contact() { return param("sandbox_contact"); }
  function entry() { return param("sandbox_entry") || "single_chat_tools"; }

  var wx = {
    config: function (cfg) {
      record("config", { appId: cfg.appId, jsApiList: cfg.jsApiList });
      verify("corp", cfg).then(function (ok) {
        configured = ok;
        if (ok) readyFns.forEach(function (f) { f(); });
        else errorFns.forEach(function (f) { f({ errMsg: "config:invalid signature" }); });
      });
    },
    ready: function (fn) { if (configured) fn(); else readyFns.push(fn); },
    error: function (fn) { if (configured === false) fn({ errMsg: "config:invalid signature" }); else errorFns.push(fn); },
    agentConfig: function (cfg) {
      record("agentConfig", { corpid: cfg.corpid, agentid: cfg.agentid, jsApiList: cfg.jsApiList });
      verify("agent", cfg).then(function (ok) {
        agentConfigured = ok;
        if (ok) cfg.success && cfg.success({ errMsg: "agentConfig:ok" });
        else cfg.fail && cfg.fail({ errMsg: "agentConfig:invalid signature" });
      });
    },
    invoke: function (api, args, cb) {
      record(api, args || {});
      var res;
      if (!configured) res = { err_msg: api + ":fail not configured" };
      else if (api === "getContext") res = { err_msg: "getContext:ok", entry: entry() };
      else if (!agentConfigured) res = { err_msg: api + ":fail no permission" };
      else if (api === "getCurExternalContact") {
        res = contact() && SINGLE_CUSTOMER.indexOf(entry()) >= 0 ? { err_msg: "getCurExternalContact:ok", userId: contact() }
                        : { err_msg: "getCurExternalContact:fail without context of external contact" };
      } else if (api === "sendChatMessage") res = { err_msg: "sendChatMessage:ok" };
      else res = { err_msg: api + ":ok" };
      setTimeout(function () { cb && cb(res); }, 0);
    }
  };
  window.wx = window.jWeixin = wx;
})();
