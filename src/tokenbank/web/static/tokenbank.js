// tokenbank pages: small enhancements on top of pages that work without JavaScript.
// Alpine's CSP build runs these components (no eval, so the pages' CSP stays 'self').
(function () {
  "use strict";

  // Stripe.js in the page's language ("zh" is Simplified Chinese there).
  function stripeLocale() {
    return document.documentElement.lang === "zh-CN" ? "zh" : "en";
  }

  function toast(text, tone) {
    window.dispatchEvent(new CustomEvent("tb:toast", { detail: { text: text, tone: tone || "" } }));
  }

  document.documentElement.classList.add("js");

  // Times are shown in the reader's zone: the browser's, until the account names one.
  var zone = "";
  try { zone = Intl.DateTimeFormat().resolvedOptions().timeZone || ""; } catch (e) { /* none */ }
  if (!/^[A-Za-z0-9_+\-\/]{1,64}$/.test(zone)) zone = "";  // an IANA name is cookie-safe as it is
  if (zone && !document.cookie.split("; ").some(function (c) { return c === "tb_tz=" + zone; })) {
    document.cookie = "tb_tz=" + zone + "; path=/; max-age=31536000; samesite=lax" +
      (location.protocol === "https:" ? "; secure" : "");
  }
  document.addEventListener("DOMContentLoaded", function () {
    document.querySelectorAll("input[data-browser-time-zone]").forEach(function (input) {
      if (!input.value) input.value = zone;
    });
  });

  // The header's menu folds on a phone: its button opens and closes it.
  document.addEventListener("click", function (event) {
    var toggle = event.target instanceof Element && event.target.closest(".menu-toggle");
    if (!toggle) return;
    var open = toggle.getAttribute("aria-expanded") !== "true";
    toggle.setAttribute("aria-expanded", open ? "true" : "false");
    toggle.closest(".top").classList.toggle("open", open);
  });

  // A form that is being sent shows it and cannot be sent twice.
  document.addEventListener("submit", function (event) {
    var form = event.target;
    if (!(form instanceof HTMLFormElement) || event.defaultPrevented) return;
    var button = event.submitter || form.querySelector("button[type=submit]");
    if (button && form.method.toLowerCase() === "post") {
      if (button.getAttribute("aria-busy") === "true") { event.preventDefault(); return; }
      button.setAttribute("aria-busy", "true");
    }
  });
  window.addEventListener("pageshow", function () {  // back from Stripe: buttons usable again
    document.querySelectorAll("[aria-busy=true]").forEach(function (el) { el.removeAttribute("aria-busy"); });
  });

  // htmx: a failed request is said in a toast; a signed-out poll stops quietly.
  document.addEventListener("htmx:responseError", function (event) {
    var xhr = event.detail.xhr;
    if (xhr.status === 401 || xhr.status === 286) return;
    var message = document.body.dataset.requestFailed || "Something went wrong.";
    try { message = JSON.parse(xhr.responseText).detail || message; } catch (e) { /* not JSON */ }
    toast(message, "error");
  });
  document.addEventListener("htmx:sendError", function () {
    toast(document.body.dataset.offline || "The server cannot be reached.", "error");
  });

  document.addEventListener("alpine:init", function () {
    var Alpine = window.Alpine;

    Alpine.data("toasts", function () {
      return {
        init: function () {
          var self = this;
          this.$el.querySelectorAll("[data-toast]").forEach(function (el) { self.keep(el); });
          window.addEventListener("tb:toast", function (event) {
            var el = document.createElement("div");
            el.className = "toast " + (event.detail.tone || "");
            el.setAttribute("data-toast", "");
            var p = document.createElement("p");
            p.textContent = event.detail.text;
            el.appendChild(p);
            self.$el.appendChild(el);
            self.keep(el);
          });
        },
        keep: function (el) {
          var close = document.createElement("button");
          close.type = "button";
          close.setAttribute("aria-label", this.$el.dataset.closeLabel || "Dismiss");
          close.textContent = "×";
          close.addEventListener("click", function () { el.remove(); });
          el.appendChild(close);
          setTimeout(function () { el.remove(); }, el.classList.contains("error") ? 12000 : 7000);
        }
      };
    });

    // The pricing page: buy buttons start a purchase without leaving the page, then go to
    // Stripe Checkout, or (payment_intent flow) open the card form in a modal.
    Alpine.data("shop", function () {
      return {
        open: false, paying: false, done: false, busy: false,
        name: "", summary: "", price: "", message: "",
        stripe: null, card: null, secret: null, returnUrl: "",
        start: function (event) {
          var form = event.target;
          if (this.busy) { event.preventDefault(); return; }
          event.preventDefault();
          var self = this;
          var button = form.querySelector("button[type=submit]");
          this.busy = true;
          button.setAttribute("aria-busy", "true");
          fetch(form.action, {
            method: "POST", body: new FormData(form), credentials: "same-origin",
            headers: { "Accept": "application/json" }
          }).then(function (response) {
            return response.json().then(function (body) { return { response: response, body: body }; });
          }).then(function (result) {
            var body = result.body;
            if (!result.response.ok) {
              if (result.response.status === 401 && body.login) { window.location.assign(body.login); return; }
              var refusal = new Error(body.detail || self.$el.dataset.failed);
              refusal.fromServer = true;  // a sentence in the page's language
              throw refusal;
            }
            if (body.redirect) { window.location.assign(body.redirect); return; }
            self.show(body);
          }).catch(function (error) {
            // Network failures and non-JSON answers get the page's own words, not the browser's.
            toast(error && error.fromServer ? error.message : self.$el.dataset.failed, "error");
          }).finally(function () {
            self.busy = false;
            button.removeAttribute("aria-busy");
          });
        },
        show: function (body) {
          if (typeof window.Stripe === "undefined") { throw new Error(this.$el.dataset.failed); }
          this.stripe = this.stripe || window.Stripe(body.publishable_key, { locale: stripeLocale() });
          if (this.card) { this.card.destroy(); }
          this.card = this.stripe.elements().create("card");
          this.secret = body.client_secret;
          this.returnUrl = body.return_url;
          this.name = body.name;
          this.summary = body.summary;
          this.price = body.price;
          this.message = "";
          this.done = false;
          this.paying = true;
          this.open = true;
          var self = this;
          // A native modal dialog: focus moves in and stays in, the page behind is inert,
          // Escape closes it and focus returns to the buy button.
          this.$refs.dialog.showModal();
          this.card.on("ready", function () { self.card.focus(); });
          this.$nextTick(function () { self.card.mount("#card-element"); });
        },
        pay: function (event) {
          event.preventDefault();
          if (this.busy) return;
          var self = this;
          this.busy = true;
          this.message = "";
          this.stripe.confirmCardPayment(this.secret, { payment_method: { card: this.card } })
            .then(function (result) {
              if (result.error) {
                self.message = result.error.message || self.$el.dataset.failed;
                toast(self.message, "error");
                return;
              }
              // Paid: from here on, never suggest paying again. If the result cannot be shown
              // in the modal, the success page shows it.
              var success = self.returnUrl + encodeURIComponent(result.paymentIntent.id);
              return fetch(success, {
                credentials: "same-origin", headers: { "HX-Request": "true" }
              }).then(function (response) {
                if (!response.ok) { throw new Error(String(response.status)); }
                return response.text();
              }).then(function (html) {
                self.paying = false;
                self.done = true;
                var target = document.getElementById("pay-result");
                target.innerHTML = html;  // our own escaped fragment (allowScriptTags is off)
                if (window.htmx) { window.htmx.process(target); }
                toast(self.$el.dataset.paid, "good");
              }).catch(function () { window.location.assign(success); });
            })
            .catch(function () { self.message = self.$el.dataset.failed; })
            .finally(function () { self.busy = false; });
        },
        close: function () { this.$refs.dialog.close(); },
        closed: function () {  // the dialog's close event: the button, Escape, or the form
          if (this.card) { this.card.destroy(); this.card = null; }
          this.open = false;
          if (this.done) { window.location.assign("/dashboard"); }
        }
      };
    });
  });
})();
