"""The Stripe.js stand-in, run by Node with a tiny fake DOM against the live emulator."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.emulator.conftest import Harness
from tokenbank.emulator.payments import AUTHENTICATION_FAILED_FOR_CUSTOMER

NODE = shutil.which("node")

# A page's code, exactly as it would run against real Stripe.js. With an ``answer``, the
# customer answers the bank's challenge in the frame the stand-in opens ("complete" or "fail"
# in the frame's page, as a click would) or closes it ("close").
HARNESS = r"""
const [scriptUrl, publishableKey, clientSecret, number, answer] = process.argv.slice(1);
function element(tag) {
  return {
    tag, children: [], listeners: {}, attributes: {}, style: {}, value: "", textContent: "",
    parentNode: null,
    appendChild(child) { this.children.push(child); child.parentNode = this; return child; },
    removeChild(child) { this.children = this.children.filter((c) => c !== child); return child; },
    addEventListener(type, fn) { (this.listeners[type] = this.listeners[type] || []).push(fn); },
    setAttribute(name, value) { this.attributes[name] = String(value); },
  };
}
function find(node, tag) {
  if (node.tag === tag) return node;
  for (const child of node.children) { const found = find(child, tag); if (found) return found; }
  return null;
}
const mountPoint = element("div");
const body = element("body");
const page = "https://shop.example";
const windowListeners = {};
globalThis.window = {
  location: { href: `${page}/pay`, origin: page },
  addEventListener(type, fn) { (windowListeners[type] = windowListeners[type] || []).push(fn); },
  removeEventListener(type, fn) {
    windowListeners[type] = (windowListeners[type] || []).filter((f) => f !== fn);
  },
};
globalThis.document = {
  currentScript: { src: scriptUrl },
  body,
  querySelector: (selector) => (selector === "#card-element" ? mountPoint : null),
  createElement: element,
};
async function answerChallenge() {
  while (!body.children.length) { await new Promise((resolve) => setTimeout(resolve, 10)); }
  const overlay = body.children[0];
  const frame = find(overlay, "iframe");
  const seen = { label: overlay.attributes["aria-label"], title: frame.title, src: frame.src,
                 position: overlay.style.position };
  const tell = (message) => (windowListeners.message || []).slice().forEach((fn) => fn(message));
  // Another origin (the page itself, say) claiming the challenge was answered is not heard.
  const intent = new URL(frame.src).pathname.split("/")[2];
  tell({ origin: page, data: { type: "stripe-emulator:three-d-secure-answered",
                               payment_intent: intent } });
  await new Promise((resolve) => setTimeout(resolve, 50));
  if (answer === "close") {
    find(overlay, "button").listeners.click.forEach((fn) => fn());
    return seen;
  }
  const response = await fetch(frame.src, {
    method: "POST", body: new URLSearchParams({ outcome: answer }),
  });
  const said = /window\.parent\.postMessage\((.*?), "\*"\);/.exec(await response.text());
  tell({ origin: new URL(frame.src).origin, data: JSON.parse(said[1]) });
  return seen;
}
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
  const paying = stripe.confirmCardPayment(clientSecret, { payment_method: { card } });
  const challenge = answer ? await answerChallenge() : null;
  const result = await paying;
  const left = body.children.length;
  console.log(JSON.stringify({ labels, lastChange: changes[changes.length - 1], result,
                               challenge, left }));
})().catch((err) => { console.error(err); process.exit(1); });
"""


def _run(emu: Harness, secret: str, number: str, answer: str = "") -> Any:
    assert NODE is not None
    done = subprocess.run(
        [NODE, "-e", HARNESS, f"{emu.url}/v3/", "pk_test_page", secret, number, answer],
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


@pytest.mark.skipif(NODE is None, reason="Node.js is not installed")
@pytest.mark.parametrize("answer", ["complete", "fail", "close"])
def test_confirm_card_payment_shows_the_challenge_and_settles_from_its_answer(
    emu: Harness, answer: str
) -> None:
    intent = emu.client.v1.payment_intents.create({"amount": 1200, "currency": "usd"})
    assert intent.client_secret is not None

    ran = _run(emu, intent.client_secret, "4000 0025 0000 3155", answer)
    challenge = ran["challenge"]
    assert challenge["label"] == "3D Secure authentication" and challenge["position"] == "fixed"
    assert challenge["src"].startswith(f"{emu.url}/3d_secure/{intent.id}/src_")
    assert ran["left"] == 0  # the challenge is gone once answered
    settled = emu.client.v1.payment_intents.retrieve(intent.id)
    if answer == "complete":
        assert ran["result"]["paymentIntent"]["id"] == intent.id
        assert ran["result"]["paymentIntent"]["status"] == "succeeded"
        assert settled.status == "succeeded"
        return
    error = ran["result"]["error"]
    assert (error["type"], error["code"]) == (
        "invalid_request_error",
        "payment_intent_authentication_failure",
    )
    assert error["message"] == AUTHENTICATION_FAILED_FOR_CUSTOMER
    assert error["payment_intent"]["status"] == "requires_payment_method"
    assert settled.status == "requires_payment_method"
    assert settled.last_payment_error is not None
    assert settled.last_payment_error.code == "payment_intent_authentication_failure"

    retried = _run(emu, intent.client_secret, "4242 4242 4242 4242")
    assert retried["result"]["paymentIntent"]["status"] == "succeeded"
    assert retried["challenge"] is None
