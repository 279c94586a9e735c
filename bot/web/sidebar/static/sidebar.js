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
      if (CHAT_ENTRIES.indexOf(res.entry) < 0) return wrongEntry(res.entry);
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

  // Where WeCom may open a page (getContext entry) and what staff should do instead; the card needs
  // a single customer: a one-to-one chat (also a 微信客服 one) or the customer's profile.
  var ENTRY_NAMES = {
    group_chat_tools: "客户群聊的工具栏", chain_group_chat_tools: "上下游群聊的工具栏",
    chain_single_chat_tools: "上下游单聊的工具栏", internal_group_chat_board: "内部群聊",
    chat_attachment: "聊天附件栏", normal: "应用主页或工作台"
  };
  function wrongEntry(entry) {
    step("getContext", false);
    var where = ENTRY_NAMES[entry] || "其他入口";
    var box = document.getElementById("problem");
    box.innerHTML = "<h1>侧边栏只在客户单聊中可用</h1>" +
      "<p>当前从「" + escapeHtml(where) + "」打开（入口 " + escapeHtml(entry || "未知") + "）。</p>" +
      "<p>请在与客户的单聊、微信客服会话或客户资料页的聊天工具栏中打开本页。</p>";
    box.className = "notice info";
    box.hidden = false;
    box.setAttribute("data-failed-step", "getContext");
    box.setAttribute("data-entry", entry || "");
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
      var optButton = ev.target.closest("button[data-opt-out]");
      if (optButton) {
        var out = optButton.getAttribute("data-opt-out") === "true";
        var optStatus = holder.querySelector("[data-opt-status]");
        optButton.disabled = true;
        post(base + "customer/" + encodeURIComponent(externalUserid) + "/opt-out", { opted_out: out }).then(function (j) {
          optButton.disabled = false;
          if (j.status !== 200) { optStatus.textContent = j.error || "保存失败"; return; }
          holder.querySelector("[data-opt-flag]").hidden = !j.opted_out;
          optButton.setAttribute("data-opt-out", j.opted_out ? "false" : "true");
          optButton.textContent = j.opted_out ? "恢复推送" : "客户说了退订";
          optStatus.textContent = j.opted_out ? "已退订：群发和推送不再发给该客户" : "已恢复推送";
        }).catch(function () { optButton.disabled = false; optStatus.textContent = "网络错误，请重试"; });
        return;
      }
      var send = ev.target.closest("button[data-send]");
      if (send) {
        var text = document.getElementById(send.getAttribute("data-send")).textContent.trim();
        var status = send.parentNode.querySelector("[data-send-status]");
        if (!text) return;
        wx.invoke("sendChatMessage", { msgtype: "text", enterChat: true, text: { content: text } }, function (res) {
          status.textContent = isOk(res, "sendChatMessage") ? "已发送到聊天" : "发送失败：" + errText(res);
        });
      }
    });
    wireReplies(holder);
    wireCoupons(holder, externalUserid);
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

  // 话术库: filter by title or text as staff type (all replies are on the page already).
  function wireReplies(holder) {
    var input = holder.querySelector("[data-reply-filter]");
    if (!input) return;
    var none = holder.querySelector("[data-reply-none]");
    input.addEventListener("input", function () {
      var words = input.value.trim().toLowerCase().split(/\s+/).filter(Boolean);
      var shown = 0;
      holder.querySelectorAll("[data-reply]").forEach(function (item) {
        var hay = item.textContent.toLowerCase();
        var match = words.every(function (w) { return hay.indexOf(w) >= 0; });
        item.hidden = !match;
        if (match) shown += 1;
      });
      none.hidden = shown > 0;
    });
  }

  function requestKey() {
    var bytes = new Uint8Array(12);
    window.crypto.getRandomValues(bytes);
    return Array.prototype.map.call(bytes, function (b) { return ("0" + b.toString(16)).slice(-2); }).join("");
  }

  // One tap issues one coupon; the key makes a retried request return the same coupon.
  function wireCoupons(holder, externalUserid) {
    var url = base + "customer/" + encodeURIComponent(externalUserid) + "/coupons";
    var status = holder.querySelector("[data-coupon-status]");
    var sent = holder.querySelector("[data-coupon-sent]");
    var count = holder.querySelector("[data-coupon-count]");
    holder.querySelectorAll("button[data-coupon]").forEach(function (button) {
      button.addEventListener("click", function () {
        button.disabled = true;
        status.className = "muted";
        post(url, { definition: button.getAttribute("data-coupon"), key: requestKey() }).then(function (j) {
          button.disabled = false;
          if (j.status !== 200) {
            status.className = "error";
            status.textContent = j.error || "发券失败";
            return;
          }
          status.textContent = "已发放「" + j.title + "」券码 " + j.code + "，" + j.expires + " 前有效";
          if (count) count.textContent = "今天已发 " + j.issued_today + "/" + j.limit;
          document.getElementById("coupon-text").textContent = j.text;
          sent.querySelector("[data-send-status]").textContent = "";
          sent.hidden = !j.text;
        }).catch(function () { button.disabled = false; status.textContent = "网络错误，请重试"; });
      });
    });
  }
})();
