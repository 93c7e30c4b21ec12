// Tiny DOM helper shared by the panes (text goes in as text, never as markup).

export function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}
