// The chat page: the same form, sent to /chat/stream, with the answer shown as it streams,
// then its cost and the balance after it. Without JavaScript the form posts to /chat.
(function () {
  "use strict";

  function element(tag, className, text) {
    var node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function showBalance(balance) {
    var shown = document.querySelector("#balance-widget [data-available]");
    if (!shown || !isFinite(balance)) return;
    shown.setAttribute("data-available", String(balance));
    shown.textContent = new Intl.NumberFormat(document.documentElement.lang).format(balance);
  }

  document.addEventListener("DOMContentLoaded", function () {
    var form = document.querySelector("form[data-chat]");
    if (!form) return;
    var card = form.closest(".chat");
    var list = card.querySelector("[data-messages]");
    var history = form.querySelector("[data-history]");
    var prompt = form.querySelector("textarea");
    var button = form.querySelector("button[type=submit]");
    var dialog = document.querySelector("dialog[data-short]");
    var conversation = [];
    if (dialog) {
      dialog.querySelector("[data-close]").addEventListener("click", function () { dialog.close(); });
    }

    function say(role, text) {
      var item = element("li", "message " + role);
      var body = element("p", "", text);
      item.appendChild(body);
      list.appendChild(item);
      return { item: item, body: body };
    }

    function refused(answer, shown) {
      return answer.json().catch(function () { return {}; }).then(function (problem) {
        shown.item.remove();
        if (answer.status === 402 && problem.code === "insufficient_tokens" && dialog) {
          dialog.showModal();
          return;
        }
        say("error", problem.message || card.getAttribute("data-failed"));
      });
    }

    function read(answer, shown) {
      var reader = answer.body.getReader();
      var decoder = new TextDecoder();
      var buffer = "";
      var text = "";
      function handle(event) {
        event.split("\n").forEach(function (line) {
          if (line.indexOf(": tokenbank charged=") === 0) {
            var charged = /charged=(\d+)/.exec(line);
            var balance = /balance=(\d+)/.exec(line);
            if (charged) {
              var cost = new Intl.NumberFormat(document.documentElement.lang).format(Number(charged[1]));
              shown.item.appendChild(element("p", "hint", card.getAttribute("data-charged").replace("{tokens}", cost)));
            }
            if (balance) showBalance(Number(balance[1]));
          } else if (line.indexOf("data: ") === 0 && line !== "data: [DONE]") {
            var chunk;
            try { chunk = JSON.parse(line.slice(6)); } catch (e) { return; }
            if (chunk.error) {
              shown.item.appendChild(element("p", "notice error", card.getAttribute("data-failed")));
              return;
            }
            (chunk.choices || []).forEach(function (choice) {
              if (choice.delta && choice.delta.content) {
                text += choice.delta.content;
                shown.body.textContent = text;
              }
            });
          }
        });
      }
      function pump() {
        return reader.read().then(function (step) {
          if (step.done) {
            if (buffer) handle(buffer);
            return text;
          }
          buffer += decoder.decode(step.value, { stream: true });
          var events = buffer.split("\n\n");
          buffer = events.pop();
          events.forEach(handle);
          return pump();
        });
      }
      return pump();
    }

    form.addEventListener("submit", function (event) {
      event.preventDefault();
      var message = prompt.value;
      if (!message.trim()) return;
      history.value = JSON.stringify(conversation);
      var body = new URLSearchParams(new FormData(form));
      say("user", message);
      var shown = say("assistant", "…");
      prompt.value = "";
      button.disabled = true;
      fetch("/chat/stream", {
        method: "POST",
        body: body,
        credentials: "same-origin",
        headers: { "Accept": "text/event-stream, application/json" },
      }).then(function (answer) {
        if (!answer.ok) return refused(answer, shown);
        return read(answer, shown).then(function (text) {
          conversation.push({ role: "user", content: message }, { role: "assistant", content: text });
        });
      }).catch(function () {
        shown.body.textContent = card.getAttribute("data-failed");
      }).then(function () {
        button.disabled = false;
        prompt.focus();
      });
    });
  });
})();
