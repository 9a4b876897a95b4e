// The embedded card form: the same code runs with Stripe.js and with the emulator's stand-in.
(function () {
  "use strict";
  const form = document.getElementById("payment-form");
  if (!form || typeof Stripe === "undefined") return;
  const locale = document.documentElement.lang === "zh-CN" ? "zh" : "en";
  const stripe = Stripe(form.dataset.publishableKey, { locale: locale });
  const card = stripe.elements().create("card");
  card.mount("#card-element");
  const message = document.getElementById("payment-message");
  const button = form.querySelector("button[type=submit]");
  form.addEventListener("submit", async function (event) {
    event.preventDefault();
    button.disabled = true;
    message.hidden = true;
    const result = await stripe.confirmCardPayment(form.dataset.clientSecret, {
      payment_method: { card: card },
    });
    if (result.error) {
      message.textContent = result.error.message || form.dataset.failed;
      message.hidden = false;
      button.disabled = false;
      return;
    }
    window.location.assign(form.dataset.returnUrl + encodeURIComponent(result.paymentIntent.id));
  });
})();
