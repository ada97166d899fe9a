"""Commerce bookkeeping: carts, checkouts, orders and returns (pure).

:data:`HANDLERS` folds one settled commerce touchpoint (add to cart, remove,
checkout started, purchase in any channel, return) into a
:class:`JourneyState`; :func:`merge` adds an orphan journey's cart, checkout
and orders to a customer's. The stage machine in :mod:`stream.journey.rules`
calls both; neither reads a clock or does I/O.
"""

from __future__ import annotations

from collections.abc import Callable

from stream.contract import Touchpoint
from stream.journey.state import Cart, CartItem, Checkout, JourneyState


def merge(into: JourneyState, other: JourneyState) -> None:
    """Add ``other``'s cart, checkout and orders to ``into``: the newer cart and
    checkout win, order and return totals add up, the latest order is kept."""
    if other.cart and (into.cart is None or other.cart.updated_at > into.cart.updated_at):
        into.cart = other.cart
    if other.checkout and (
        into.checkout is None or other.checkout.started_at > into.checkout.started_at
    ):
        into.checkout = other.checkout
    o, p = into.orders, other.orders
    o.count += p.count
    o.total_value = round(o.total_value + p.total_value, 2)
    o.returns += p.returns
    o.returned_value = round(o.returned_value + p.returned_value, 2)
    if p.last_at is not None and (o.last_at is None or p.last_at > o.last_at):
        o.last_order_id, o.last_value, o.last_currency = (
            p.last_order_id,
            p.last_value,
            p.last_currency,
        )
        o.last_at, o.last_channel = p.last_at, p.last_channel


def _items(props: dict) -> list[CartItem]:
    return [item for item, _ in _items_with_quantity(props)]


def _items_with_quantity(props: dict) -> list[tuple[CartItem, bool]]:
    """Line items of an event, each with whether it stated a quantity."""
    raw = props.get("products")
    if not isinstance(raw, list):
        raw = [props]
    items = []
    for p in raw:
        if not isinstance(p, dict):
            continue
        sku = p.get("sku") or p.get("product_id")
        if not sku:
            continue
        price = p.get("price", 0.0)
        qty = p.get("quantity", 1)
        items.append(
            (
                CartItem(
                    sku=str(sku),
                    name=str(p.get("name") or ""),
                    price=float(price) if isinstance(price, int | float) else 0.0,
                    quantity=qty if isinstance(qty, int) and qty >= 0 else 1,
                ),
                "quantity" in p,
            )
        )
    return items


def _on_add(state: JourneyState, tp: Touchpoint) -> None:
    props = dict(tp.properties)
    cart_id = props.get("cart_id")
    cart = state.cart
    if cart is None or (cart_id and cart_id != cart.cart_id):
        cart = Cart(cart_id=str(cart_id or f"cart:{tp.event_id}"))
    for item in _items(props):
        held = cart.items.get(item.sku)
        if held is None:
            cart.items[item.sku] = item
        else:
            held.quantity += item.quantity
            held.price = item.price or held.price
    cart.currency = str(props.get("currency") or cart.currency)
    cart.updated_at = tp.timestamp
    state.cart = cart if cart.items else None


def _on_remove(state: JourneyState, tp: Touchpoint) -> None:
    cart = state.cart
    if cart is None:
        return
    for item, stated in _items_with_quantity(dict(tp.properties)):
        held = cart.items.get(item.sku)
        if held is None:
            continue
        removed = item.quantity if stated else held.quantity
        held.quantity -= removed
        if held.quantity <= 0:
            del cart.items[item.sku]
    cart.updated_at = tp.timestamp
    if not cart.items:
        state.cart = None
        state.checkout = None


def _on_checkout(state: JourneyState, tp: Touchpoint) -> None:
    cart_id = tp.properties.get("cart_id") or (state.cart.cart_id if state.cart else None)
    state.checkout = Checkout(started_at=tp.timestamp, cart_id=cart_id, event_id=tp.event_id)


def _value(props: dict) -> float:
    for name in ("value", "total", "revenue"):
        v = props.get(name)
        if isinstance(v, int | float):
            return float(v)
    return sum(i.price * i.quantity for i in _items(props))


def _on_purchase(state: JourneyState, tp: Touchpoint) -> None:
    props = dict(tp.properties)
    o = state.orders
    o.count += 1
    value = _value(props)
    o.total_value = round(o.total_value + value, 2)
    o.last_order_id = str(props.get("order_id") or tp.event_id)
    o.last_value = value
    o.last_currency = str(props.get("currency") or "")
    o.last_at = tp.timestamp
    o.last_channel = tp.channel
    # A purchase in any channel closes the open cart and checkout.
    state.cart = None
    state.checkout = None


def _on_return(state: JourneyState, tp: Touchpoint) -> None:
    state.orders.returns += 1
    state.orders.returned_value = round(
        state.orders.returned_value + abs(_value(dict(tp.properties))), 2
    )


HANDLERS: dict[str, Callable[[JourneyState, Touchpoint], None]] = {
    "add_to_cart": _on_add,
    "remove_from_cart": _on_remove,
    "checkout_started": _on_checkout,
    "purchase": _on_purchase,
    "pos_purchase": _on_purchase,
    "return": _on_return,
}
