"""The Stripe.js stand-in, run by Node with a tiny fake DOM against the live emulator."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.emulator.conftest import Harness

NODE = shutil.which("node")

# A page's code, exactly as it would run against real Stripe.js.
HARNESS = r"""
const [scriptUrl, publishableKey, clientSecret, number] = process.argv.slice(1);
function element(tag) {
  return {
    tag, children: [], listeners: {}, value: "", textContent: "",
    appendChild(child) { this.children.push(child); return child; },
    addEventListener(type, fn) { (this.listeners[type] = this.listeners[type] || []).push(fn); },
  };
}
const mountPoint = element("div");
const page = "https://shop.example";
globalThis.window = { location: { href: `${page}/pay`, origin: page } };
globalThis.document = {
  currentScript: { src: scriptUrl },
  querySelector: (selector) => (selector === "#card-element" ? mountPoint : null),
  createElement: element,
};
(async () => {
  const source = await (await fetch(scriptUrl)).text();
  new Function(source)();
  const stripe = window.Stripe(publishableKey);
  const card = stripe.elements().create("card");
  card.mount("#card-element");
  const changes = [];
  card.on("change", (event) => {
    changes.push({ complete: event.complete, error: event.error || null });
  });
  const labels = [];
  const inputs = {};
  for (const wrapper of mountPoint.children) {
    const [label, input] = wrapper.children;
    labels.push(label.textContent);
    inputs[label.textContent] = input;
  }
  for (const [name, value] of [["Card number", number], ["Expiry", "12 / 40"], ["CVC", "123"]]) {
    inputs[name].value = value;
    inputs[name].listeners.input.forEach((fn) => fn());
  }
  const result = await stripe.confirmCardPayment(clientSecret, { payment_method: { card } });
  console.log(JSON.stringify({ labels, lastChange: changes[changes.length - 1], result }));
})().catch((err) => { console.error(err); process.exit(1); });
"""


def _run(emu: Harness, secret: str, number: str) -> Any:
    assert NODE is not None
    done = subprocess.run(
        [NODE, "-e", HARNESS, f"{emu.url}/v3/", "pk_test_page", secret, number],
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
        cwd=Path(__file__).parent,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest.mark.skipif(NODE is None, reason="Node.js is not installed")
def test_confirm_card_payment_through_the_stand_in(emu: Harness) -> None:
    intent = emu.client.v1.payment_intents.create({"amount": 1200, "currency": "usd"})
    assert intent.client_secret is not None

    declined = _run(emu, intent.client_secret, "4000 0000 0000 9995")
    assert declined["labels"] == ["Card number", "Expiry", "CVC"]
    assert declined["lastChange"] == {"complete": True, "error": None}
    error = declined["result"]["error"]
    assert (error["type"], error["code"], error["decline_code"]) == (
        "card_error",
        "card_declined",
        "insufficient_funds",
    )
    assert error["message"] == "Your card has insufficient funds."

    paid = _run(emu, intent.client_secret, "4242 4242 4242 4242")
    assert paid["result"]["paymentIntent"]["id"] == intent.id
    assert paid["result"]["paymentIntent"]["status"] == "succeeded"
    assert emu.client.v1.payment_intents.retrieve(intent.id).status == "succeeded"

    invalid = _run(emu, intent.client_secret, "4242 4242 4242 4241")
    assert invalid["lastChange"]["error"]["code"] == "invalid_number"
    assert invalid["result"]["error"]["type"] == "validation_error"
