/* The sidebar's steps: register the JS-SDK (corp, then app identity), ask WeCom where the page was
   opened and for which customer, then load that customer's card. Each step marks itself done or
   failed, and a failure says what to check, so the page is never blank. */
(function () {
  "use strict";
  var body = document.body;
  var reg = JSON.parse(document.getElementById("registration").textContent);
  var base = body.getAttribute("data-base");
  var csrf = body.getAttribute("data-csrf");
  var CHAT_ENTRIES = ["single_chat_tools", "single_kf_tools", "contact_profile"];
  var HINTS = {
    config: ["本页域名已加入应用的「可信域名」（应用管理 → 网页授权及JS-SDK）",
             "服务的 app.public_url 与企业微信里配置的侧边栏地址一致（签名按完整地址计算）",
             "企业 ID（wecom.corp_id）填写正确"],
    agentConfig: ["本页域名已加入该应用的「可信域名」",
                  "你在该应用的「可见范围」内，且 wecom.agent_id 与应用 secret 属于同一应用",
                  "企业微信客户端版本不低于 3.0.24；出现 40093 表示签名错误，请核对 app.public_url"],
    getContext: ["请从客户聊天窗口的「聊天工具栏」或客户资料页打开本页"],
    getCurExternalContact: ["应用已加入「客户联系 → 可调用接口的应用」",
                            "你本人已开通客户联系功能（有客户联系权限）",
                            "从单聊（而非群聊）的工具栏打开"],
    card: ["稍后重试；若一直失败请联系管理员查看服务日志"]
  };

  function step(name, ok) {
    var li = document.querySelector('[data-step="' + name + '"]');
    if (li) li.className = ok ? "ok" : "fail";
  }
  function fail(name, title, detail) {
    step(name, false);
    var box = document.getElementById("problem");
    var items = (HINTS[name] || []).map(function (h) { return "<li>" + escapeHtml(h) + "</li>"; }).join("");
    box.innerHTML = "<h1>" + escapeHtml(title) + "</h1>" +
      (detail ? "<p>企业微信返回：" + escapeHtml(detail) + "</p>" : "") +
      (items ? "<p>请检查：</p><ul>" + items + "</ul>" : "");
    box.hidden = false;
    box.setAttribute("data-failed-step", name);
  }
  function escapeHtml(text) {
    return String(text).replace(/[&<>"']/g, function (c) {
      return { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c];
    });
  }
  function errText(res) { return (res && (res.errMsg || res.err_msg)) || ""; }
  function isOk(res, api) { return errText(res) === api + ":ok"; }

  if (!window.wx) {
    fail("config", "企业微信 JS-SDK 没有加载", "请在企业微信客户端内打开本页");
    return;
  }
  var wx = window.wx;
  var settled = false;
  var timer = setTimeout(function () {
    if (!settled) fail("config", "等待企业微信超时", "wx.config 没有回应");
  }, 10000);

  wx.config({ beta: true, debug: false, appId: reg.corpId, timestamp: reg.timestamp, nonceStr: reg.nonceStr,
              signature: reg.signature, jsApiList: reg.jsApiList });
  wx.error(function (res) {
    settled = true; clearTimeout(timer);
    fail("config", "注册企业身份失败（config:fail）", errText(res));
  });
  wx.ready(function () {
    settled = true; clearTimeout(timer);
    step("config", true);
    wx.agentConfig({
      corpid: reg.corpId, agentid: String(reg.agentId), timestamp: reg.timestamp, nonceStr: reg.nonceStr,
      signature: reg.agentSignature, jsApiList: reg.jsApiList,
      success: function () { step("agentConfig", true); askContext(); },
      fail: function (res) { fail("agentConfig", "注册应用身份失败（agentConfig:fail）", errText(res)); }
    });
  });

  function askContext() {
    wx.invoke("getContext", {}, function (res) {
      if (!isOk(res, "getContext")) return fail("getContext", "无法确认打开入口", errText(res));
      if (CHAT_ENTRIES.indexOf(res.entry) < 0) {
        return fail("getContext", "请在客户聊天中打开", "当前入口：" + res.entry);
      }
      step("getContext", true);
      wx.invoke("getCurExternalContact", {}, function (r) {
        if (!isOk(r, "getCurExternalContact") || !r.userId) {
          var noPerm = /no permission/.test(errText(r));
          return fail("getCurExternalContact", noPerm ? "没有客户联系权限（no permission）" : "无法获取当前客户",
                      errText(r));
        }
        step("getCurExternalContact", true);
        loadCard(r.userId);
      });
    });
  }

  function loadCard(externalUserid) {
    fetch(base + "customer/" + encodeURIComponent(externalUserid), { credentials: "same-origin" })
      .then(function (resp) {
        return resp.text().then(function (html) { return { status: resp.status, html: html }; });
      })
      .then(function (r) {
        var holder = document.getElementById("card");
        if (r.status !== 200) {
          step("card", false);
          var doc = new DOMParser().parseFromString(r.html, "text/html");
          var refusal = doc.querySelector("[data-refusal]");
          holder.innerHTML = "";
          if (refusal) holder.appendChild(document.importNode(refusal, true));
          else fail("card", "加载客户资料失败", "HTTP " + r.status);
          holder.setAttribute("data-status", String(r.status));
          return;
        }
        holder.innerHTML = r.html;
        holder.setAttribute("data-status", "200");
        step("card", true);
        body.classList.add("loaded");
        wire(holder, externalUserid);
      })
      .catch(function (e) { fail("card", "加载客户资料失败", String(e)); });
  }

  function post(url, payload) {
    return fetch(url, { method: "POST", credentials: "same-origin",
                        headers: { "Content-Type": "application/json", "X-CSRF-Token": csrf },
                        body: JSON.stringify(payload) })
      .then(function (resp) { return resp.json().then(function (j) { j.status = resp.status; return j; }); });
  }

  function wire(holder, externalUserid) {
    var tagUrl = base + "customer/" + encodeURIComponent(externalUserid) + "/tags";
    var tagStatus = holder.querySelector("[data-tag-status]");
    holder.addEventListener("click", function (ev) {
      var tagButton = ev.target.closest("button[data-tag-id]");
      if (tagButton) {
        var on = tagButton.getAttribute("aria-pressed") !== "true";
        tagButton.disabled = true;
        post(tagUrl, { tag_id: Number(tagButton.getAttribute("data-tag-id")), checked: on }).then(function (j) {
          tagButton.disabled = false;
          if (j.status !== 200) { tagStatus.textContent = j.error || "保存失败"; return; }
          tagButton.setAttribute("aria-pressed", j.checked ? "true" : "false");
          tagStatus.textContent = j.pushed ? "已保存并同步到企业微信" : "已保存，稍后同步到企业微信";
        });
        return;
      }
      var send = ev.target.closest("button[data-send]");
      if (send) {
        var text = document.getElementById(send.getAttribute("data-send")).textContent.trim();
        var status = send.parentNode.querySelector("[data-send-status]");
        wx.invoke("sendChatMessage", { msgtype: "text", enterChat: true, text: { content: text } }, function (res) {
          status.textContent = isOk(res, "sendChatMessage") ? "已发送到聊天" : "发送失败：" + errText(res);
        });
      }
    });
    var form = holder.querySelector("[data-tag-new]");
    if (form) form.addEventListener("submit", function (ev) {
      ev.preventDefault();
      var name = form.elements.name.value.trim();
      if (!name) return;
      post(tagUrl, { name: name, checked: true }).then(function (j) {
        if (j.status !== 200) { tagStatus.textContent = j.error || "保存失败"; return; }
        tagStatus.textContent = (j.pushed ? "已打上并同步到企业微信" : "已打上，稍后同步到企业微信") + "（刷新后显示在分组中）";
        form.reset();
        var existing = holder.querySelector('button[data-tag-id="' + j.tag_id + '"]');
        if (existing) existing.setAttribute("aria-pressed", "true");
      });
    });
  }
})();
