/* Stripe emulator: the part of Stripe.js v3 a card payment page uses.
 * Stripe(pk).elements().create('card').mount(selector), card.on('change', cb) and
 * stripe.confirmCardPayment(clientSecret, {payment_method: {card}}) behave like Stripe.js,
 * but talk to the emulator that served this file and only know Stripe's test cards.
 * A card whose bank asks for authentication gets Stripe.js's modal challenge: a frame over
 * the page, styled through the DOM only (the page's CSP may refuse inline styles). */
(function () {
  "use strict";
  var CARDS = {{ cards }};
  var ANSWERED = {{ answered }};
  var AUTHENTICATION_FAILED = {{ authentication_failed }};
  var script = document.currentScript;
  var ORIGIN = script && script.src
    ? new URL(script.src, window.location.href).origin
    : window.location.origin;
  var counter = 0;

  function digits(value) { return String(value || "").replace(/[\s-]/g, ""); }

  function luhn(number) {
    var total = 0;
    for (var i = 0; i < number.length; i++) {
      var digit = Number(number.charAt(number.length - 1 - i));
      if (i % 2) { digit = digit * 2 > 9 ? digit * 2 - 9 : digit * 2; }
      total += digit;
    }
    return total % 10 === 0;
  }

  function brandOf(number) {
    if (/^4/.test(number)) { return "visa"; }
    if (/^(5[1-5]|2[2-7])/.test(number)) { return "mastercard"; }
    if (/^3[47]/.test(number)) { return "amex"; }
    return "unknown";
  }

  function validationError(code, message) {
    return { type: "validation_error", code: code, message: message };
  }

  function check(values) {
    var number = digits(values.number);
    var expiry = String(values.expiry || "").trim();
    var cvc = String(values.cvc || "").trim();
    var empty = !number && !expiry && !cvc;
    if (number && (!/^\d+$/.test(number) || (number.length >= 12 && !luhn(number)))) {
      return { empty: empty, complete: false, error: validationError("invalid_number", "Your card number is invalid.") };
    }
    var match = /^(\d{1,2})\s*\/?\s*(\d{2}|\d{4})$/.exec(expiry);
    if (match) {
      var month = Number(match[1]);
      var year = Number(match[2]);
      if (year < 100) { year += 2000; }
      var now = new Date();
      if (month < 1 || month > 12) {
        return { empty: empty, complete: false, error: validationError("invalid_expiry_month", "Your card's expiration date is invalid.") };
      }
      if (year < now.getFullYear() || (year === now.getFullYear() && month < now.getMonth() + 1)) {
        return { empty: empty, complete: false, error: validationError("invalid_expiry_year_past", "Your card's expiration date is in the past.") };
      }
    }
    if (cvc && !/^\d{3,4}$/.test(cvc)) {
      return { empty: empty, complete: false, error: validationError("invalid_cvc", "Your card's security code is invalid.") };
    }
    var complete = number.length >= 12 && luhn(number) && Boolean(match) && /^\d{3,4}$/.test(cvc);
    return { empty: empty, complete: complete, error: undefined, brand: brandOf(number) };
  }

  function incompleteError(values) {
    var number = digits(values.number);
    if (!number || number.length < 12) { return validationError("incomplete_number", "Your card number is incomplete."); }
    if (!/^(\d{1,2})\s*\/?\s*(\d{2}|\d{4})$/.test(String(values.expiry || "").trim())) {
      return validationError("incomplete_expiry", "Your card's expiration date is incomplete.");
    }
    return validationError("incomplete_cvc", "Your card's security code is incomplete.");
  }

  function CardElement(options) {
    this._options = options || {};
    this._handlers = {};
    this._inputs = null;
    this._container = null;
  }

  CardElement.prototype._emit = function (event, payload) {
    (this._handlers[event] || []).slice().forEach(function (handler) { handler(payload); });
  };

  CardElement.prototype._values = function () {
    var inputs = this._inputs || {};
    return {
      number: inputs.number ? inputs.number.value : "",
      expiry: inputs.expiry ? inputs.expiry.value : "",
      cvc: inputs.cvc ? inputs.cvc.value : ""
    };
  };

  CardElement.prototype.mount = function (target) {
    var container = typeof target === "string" ? document.querySelector(target) : target;
    if (!container) { throw new Error("Stripe emulator: no element matches " + target); }
    var self = this;
    var prefix = "stripe-emulator-card-" + (++counter);
    var fields = [
      ["number", "Card number", "1234 1234 1234 1234", "cc-number"],
      ["expiry", "Expiry", "MM / YY", "cc-exp"],
      ["cvc", "CVC", "CVC", "cc-csc"]
    ];
    container.textContent = "";
    this._inputs = {};
    fields.forEach(function (field) {
      var wrapper = document.createElement("div");
      wrapper.className = "StripeEmulator-field StripeEmulator-" + field[0];
      var label = document.createElement("label");
      label.htmlFor = prefix + "-" + field[0];
      label.textContent = field[1];
      var input = document.createElement("input");
      input.id = prefix + "-" + field[0];
      input.placeholder = field[2];
      input.autocomplete = field[3];
      input.inputMode = "numeric";
      input.addEventListener("input", function () {
        var state = check(self._values());
        self._emit("change", {
          elementType: "card", empty: state.empty, complete: state.complete,
          error: state.error, brand: state.brand, value: {}
        });
      });
      input.addEventListener("focus", function () { self._emit("focus", { elementType: "card" }); });
      input.addEventListener("blur", function () { self._emit("blur", { elementType: "card" }); });
      wrapper.appendChild(label);
      wrapper.appendChild(input);
      container.appendChild(wrapper);
      self._inputs[field[0]] = input;
    });
    this._container = container;
    setTimeout(function () { self._emit("ready", { elementType: "card" }); }, 0);
  };

  CardElement.prototype.on = function (event, handler) {
    (this._handlers[event] = this._handlers[event] || []).push(handler);
    return this;
  };
  CardElement.prototype.off = function (event, handler) {
    this._handlers[event] = (this._handlers[event] || []).filter(function (h) { return h !== handler; });
    return this;
  };
  CardElement.prototype.unmount = function () {
    if (this._container) { this._container.textContent = ""; }
    this._container = null;
    this._inputs = null;
  };
  CardElement.prototype.destroy = CardElement.prototype.unmount;
  CardElement.prototype.clear = function () {
    var inputs = this._inputs || {};
    Object.keys(inputs).forEach(function (name) { inputs[name].value = ""; });
  };
  CardElement.prototype.focus = function () { if (this._inputs) { this._inputs.number.focus(); } };
  CardElement.prototype.blur = function () {};
  CardElement.prototype.update = function (options) {
    for (var key in options || {}) { this._options[key] = options[key]; }
  };

  function Elements() { this._card = null; }
  Elements.prototype.create = function (type, options) {
    if (type !== "card") { throw new Error("Stripe emulator: only the 'card' element is available."); }
    this._card = new CardElement(options);
    return this._card;
  };
  Elements.prototype.getElement = function (type) { return type === "card" ? this._card : null; };

  function Stripe(key, options) {
    if (!(this instanceof Stripe)) { return new Stripe(key, options); }
    if (typeof key !== "string" || key.indexOf("pk_") !== 0) {
      throw new Error("Stripe(): pass your publishable key (pk_test_...).");
    }
    this._key = key;
  }

  Stripe.prototype.elements = function () { return new Elements(); };

  Stripe.prototype._request = function (method, path, params) {
    var body = new URLSearchParams();
    Object.keys(params).forEach(function (name) {
      if (params[name] !== undefined) { body.append(name, params[name]); }
    });
    var url = ORIGIN + path;
    var init = { method: method, headers: { "Authorization": "Bearer " + this._key } };
    if (method === "GET") {
      url += "?" + body.toString();
    } else {
      init.headers["Content-Type"] = "application/x-www-form-urlencoded";
      init.body = body.toString();
    }
    return fetch(url, init).then(function (response) {
      return response.json().then(function (json) {
        return response.ok ? { paymentIntent: json } : { error: json.error };
      });
    }).catch(function (err) {
      return { error: { type: "api_connection_error", message: String((err && err.message) || err) } };
    });
  };

  function styled(element, styles) {
    Object.keys(styles).forEach(function (name) { element.style[name] = styles[name]; });
    return element;
  }

  // The modal challenge: a native modal dialog where there is one, so it sits above any
  // modal dialog the page has open (a fixed overlay would be behind it, and inert).
  function ChallengeFrame(url, onClose) {
    var probe = document.createElement("dialog");
    var modal = typeof probe.showModal === "function";
    var root = modal ? probe : document.createElement("div");
    root.className = "StripeEmulator-challenge";
    root.setAttribute("aria-label", "3D Secure authentication");
    styled(root, {
      position: "fixed", top: "0", left: "0", width: "100%", height: "100%",
      maxWidth: "none", maxHeight: "none", margin: "0", padding: "0", border: "0",
      display: "flex", alignItems: "center", justifyContent: "center",
      background: "rgba(15, 23, 42, 0.6)", zIndex: "2147483647"
    });
    var box = styled(document.createElement("div"), {
      position: "relative", width: "min(500px, calc(100vw - 32px))",
      height: "min(600px, calc(100vh - 32px))", background: "#fff", borderRadius: "8px",
      overflow: "hidden", boxShadow: "0 20px 50px rgba(0, 0, 0, 0.3)"
    });
    var close = styled(document.createElement("button"), {
      position: "absolute", top: "8px", right: "8px", width: "32px", height: "32px",
      margin: "0", padding: "0", border: "0", borderRadius: "16px", background: "#fff",
      color: "#1a1f36", font: "20px/32px system-ui, sans-serif", cursor: "pointer"
    });
    close.type = "button";
    close.textContent = "\u00d7";
    close.setAttribute("aria-label", "Close");
    close.autofocus = true;  // focus starts outside the frame, where Escape reaches the dialog
    close.addEventListener("click", onClose);
    var frame = styled(document.createElement("iframe"), {
      width: "100%", height: "100%", border: "0", display: "block"
    });
    frame.title = "3D Secure authentication";
    frame.src = url;
    box.appendChild(frame);
    box.appendChild(close);
    root.appendChild(box);
    if (modal) {
      root.addEventListener("cancel", function (event) { event.preventDefault(); onClose(); });
    }
    document.body.appendChild(root);
    if (modal) { root.showModal(); }
    this._root = root;
    this._modal = modal;
  }

  ChallengeFrame.prototype.remove = function () {
    if (this._modal && this._root.open) { this._root.close(); }
    if (this._root.parentNode) { this._root.parentNode.removeChild(this._root); }
  };

  // What confirmCardPayment resolves with once the PaymentIntent is read again.
  function settled(result) {
    var intent = result.paymentIntent;
    if (result.error || intent.status !== "requires_payment_method" || !intent.last_payment_error) {
      return result;
    }
    var error = {};
    Object.keys(intent.last_payment_error).forEach(function (name) {
      error[name] = intent.last_payment_error[name];
    });
    if (error.code === "payment_intent_authentication_failure") {
      error.message = AUTHENTICATION_FAILED;
    }
    error.payment_intent = intent;
    return { error: error };
  }

  // Show the bank's challenge until it is answered (or closed, which fails it, as in
  // Stripe.js), then read the PaymentIntent again.
  Stripe.prototype._authenticate = function (clientSecret, intent) {
    var self = this;
    var url = intent.next_action.use_stripe_sdk.stripe_js;
    var origin = new URL(url, window.location.href).origin;
    return new Promise(function (resolve) {
      var done = false;
      var challenge = null;
      function finish() {
        if (done) { return; }
        done = true;
        window.removeEventListener("message", answered);
        challenge.remove();
        self.retrievePaymentIntent(clientSecret).then(function (result) {
          resolve(settled(result));
        });
      }
      function answered(event) {
        var data = event.data || {};
        if (event.origin === origin && data.type === ANSWERED && data.payment_intent === intent.id) {
          finish();
        }
      }
      function closed() {
        if (done) { return; }
        fetch(url, {
          method: "POST",
          headers: { "Content-Type": "application/x-www-form-urlencoded" },
          body: "outcome=fail"
        }).catch(function () { /* read below whatever happened */ }).then(finish);
      }
      window.addEventListener("message", answered);
      challenge = new ChallengeFrame(url, closed);
    });
  };

  Stripe.prototype.confirmCardPayment = function (clientSecret, data, options) {
    var id = String(clientSecret || "").split("_secret_")[0];
    var method = data && data.payment_method;
    var token;
    if (typeof method === "string") {
      token = method;
    } else if (method && method.card instanceof CardElement) {
      var values = method.card._values();
      var state = check(values);
      if (state.error) { return Promise.resolve({ error: state.error }); }
      if (!state.complete) { return Promise.resolve({ error: incompleteError(values) }); }
      token = CARDS[digits(values.number)];
      if (!token) {
        return Promise.resolve({ error: {
          type: "card_error", code: "card_declined", decline_code: "test_mode_live_card",
          message: "Your card was declined. Your request was in test mode, but used a non test card."
        } });
      }
    }
    var self = this;
    var handleActions = !options || options.handleActions !== false;
    return this._request("POST", "/v1/payment_intents/" + encodeURIComponent(id) + "/confirm", {
      client_secret: clientSecret, payment_method: token
    }).then(function (result) {
      var intent = result.paymentIntent;
      if (!handleActions || !intent || intent.status !== "requires_action" ||
          !intent.next_action || intent.next_action.type !== "use_stripe_sdk") {
        return result;
      }
      return self._authenticate(clientSecret, intent);
    });
  };

  Stripe.prototype.retrievePaymentIntent = function (clientSecret) {
    var id = String(clientSecret || "").split("_secret_")[0];
    return this._request("GET", "/v1/payment_intents/" + encodeURIComponent(id), {
      client_secret: clientSecret
    });
  };

  window.Stripe = Stripe;
})();
