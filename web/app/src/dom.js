// Building the page without markup strings: every text goes in as a text node, so whatever a shop or
// a customer wrote (names, descriptions, notes, reasons) is shown as text and never parsed as HTML.
// (The relay's Content-Security-Policy requires Trusted Types for script sinks as well, so an
// innerHTML assignment would throw rather than run.)

/**
 * @typedef {string | number | Node | null | undefined | false} Child
 * @typedef {Record<string, any> & {on?: Record<string, (e: Event) => void>}} Attrs
 */

/**
 * An element with attributes (`on: {click: fn}` for listeners; boolean true sets an empty
 * attribute, false/null/undefined leaves it out) and children (strings become text nodes).
 * @param {string} tag @param {Attrs} [attrs] @param {...(Child | Child[])} children
 * @returns {HTMLElement}
 */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (name === "on") for (const [type, fn] of Object.entries(value)) el.addEventListener(type, fn);
    else if (name === "value") /** @type {HTMLInputElement} */ (el).value = String(value);
    else if (value === true) el.setAttribute(name, "");
    else if (value !== false && value !== null && value !== undefined) el.setAttribute(name, String(value));
  }
  append(el, children);
  return el;
}

/** @param {Node} el @param {Array<Child | Child[]>} children */
function append(el, children) {
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    el.appendChild(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

/** Replace an element's children. @param {Element} el @param {...(Child | Child[])} children */
export function fill(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}
