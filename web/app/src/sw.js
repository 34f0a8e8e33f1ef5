// The app's service worker: the app shell (page, script, style, manifest, icon) is cached when the
// worker installs, so the app opens with no network after the first visit. Pages go to the network
// first (a new build shows at once) and fall back to the cached shell; the hashed script and style
// never change under one name, so they come from the cache. The relay's API is never cached: data
// lives in the SDK's IndexedDB store. A click on one of the app's notifications (alerts.js) brings an
// open tab of the app to the front, or opens one.

const VERSION = "__VERSION__";
const SHELL = __SHELL__;

self.addEventListener("install", (event) => {
  event.waitUntil(caches.open(VERSION).then((cache) => cache.addAll(SHELL)).then(() => self.skipWaiting()));
});

self.addEventListener("activate", (event) => {
  event.waitUntil(
    caches.keys()
      .then((keys) => Promise.all(keys.filter((k) => k.startsWith("quickslot-") && k !== VERSION).map((k) => caches.delete(k))))
      .then(() => self.clients.claim()),
  );
});

self.addEventListener("fetch", (event) => {
  const request = event.request;
  const url = new URL(request.url);
  if (request.method !== "GET" || url.origin !== location.origin || !url.pathname.startsWith(new URL("./", location.href).pathname)) return;
  if (request.mode === "navigate") {
    event.respondWith(
      fetch(request).catch(() => caches.open(VERSION).then((cache) => cache.match("./")).then((r) => r ?? Response.error())),
    );
    return;
  }
  event.respondWith(caches.open(VERSION).then((cache) => cache.match(request).then((hit) => hit ?? fetch(request))));
});

self.addEventListener("notificationclick", (event) => {
  event.notification.close();
  const target = new URL(event.notification.data?.url ?? "./", location.href);
  event.waitUntil(
    self.clients.matchAll({ type: "window", includeUncontrolled: true }).then((windows) => {
      const open = windows.find((w) => new URL(w.url).pathname === target.pathname);
      return open ? open.focus() : self.clients.openWindow(target.href);
    }),
  );
});
