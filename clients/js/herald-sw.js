// herald-sw.js: the service worker of Herald's Web Push, served at `GET /herald-sw.js`.
//
// `herald.push.subscribe()` (herald.js) registers it. It shows each push as a notification and,
// when the user clicks one, focuses a tab of the app (or opens the notification's URL).
//
// A service worker must be on the page's origin. An app whose page is on another origin than
// Herald serves a copy of this file from its own origin (or proxies `/herald-sw.js` to Herald,
// see deploy/nginx/same-origin.conf), and passes its path to `subscribe({serviceWorker})`. An
// app that has a service worker of its own adds Herald's to it with
// `importScripts('/herald-sw.js')` instead (a page's scope has one service worker).
//
// What a push carries (docs/PROTOCOL.md, "What is pushed"), as JSON:
//   {"type": "message.new", "seq": 17, "data": {"title", "body", "icon", "url", …}, "truncated"?}
// The notification's title is `data.title` (else the type), its body `data.body`, its icon
// `data.icon`, its tag the type (a newer push of a type replaces the notification shown), and it
// keeps `data` for the click. A push it cannot read still shows a notification: browsers revoke
// the permission of a site whose pushes show nothing (`userVisibleOnly`).
//
// The logic is in functions on `self` (`heraldNotification`, `heraldPush`,
// `heraldNotificationClick`, `heraldClickTarget`), so that an app's own worker can call them,
// and a test too.
//
// A classic script (not a module), so that `importScripts` can load it.

/* eslint-env serviceworker */
'use strict';

/** The title of a notification whose push could not be read (an app may set another). Such
 * notifications have the tag `herald`: a newer one replaces the one shown. */
self.HERALD_GENERIC_TITLE = 'New notification';

/**
 * The notification for a push's data (a `PushMessageData`, its text, or null): `{title,
 * options}` for `registration.showNotification(title, options)`.
 */
self.heraldNotification = function heraldNotification(pushData) {
  let payload = null;
  try {
    const text = typeof pushData === 'string' ? pushData : pushData?.text();
    payload = text ? JSON.parse(text) : null;
  } catch {
    payload = null;
  }
  if (payload === null || typeof payload !== 'object' || typeof payload.type !== 'string' || !payload.type) {
    return { title: self.HERALD_GENERIC_TITLE, options: { tag: 'herald', data: null } };
  }
  const data = payload.data !== null && typeof payload.data === 'object' ? payload.data : null;
  const text = (value) => (typeof value === 'string' && value ? value : undefined);
  const options = { tag: payload.type, data };
  const body = text(data?.body);
  const icon = text(data?.icon);
  if (body !== undefined) options.body = body;
  if (icon !== undefined) options.icon = icon;
  return { title: text(data?.title) ?? payload.type, options };
};

/** A `push` event: shows its notification. Resolves once it is shown. */
self.heraldPush = function heraldPush(event) {
  const { title, options } = self.heraldNotification(event.data);
  const shown = self.registration.showNotification(title, options);
  event.waitUntil?.(shown);
  return shown;
};

/**
 * Where a click on a notification with `data` goes: the absolute URL of `data.url` when it is on
 * this worker's origin (a relative URL is), else the origin's root. A push's data is the app's
 * data, not a trusted navigation: a URL of another origin is refused (`refused: true`).
 */
self.heraldClickTarget = function heraldClickTarget(data) {
  const root = new URL('/', self.location.href).href;
  const asked = data?.url;
  if (typeof asked !== 'string' || !asked) return { url: root, refused: false };
  let url;
  try {
    url = new URL(asked, self.location.href);
  } catch {
    return { url: root, refused: true };
  }
  if (url.origin !== self.location.origin) return { url: root, refused: true };
  return { url: url.href, refused: false };
};

/**
 * A `notificationclick` event: closes the notification, focuses a window of this origin (one at
 * the notification's URL if there is one), else opens the URL (or the origin's root). The
 * window focused also gets a message `{herald: 'notificationclick', data}` (on
 * `navigator.serviceWorker`), so that the app can show what was clicked. Resolves to the window
 * focused or opened (or null).
 */
self.heraldNotificationClick = function heraldNotificationClick(event) {
  event.notification.close();
  const data = event.notification.data ?? null;
  const handled = (async () => {
    const target = self.heraldClickTarget(data);
    if (target.refused) console.warn(`herald-sw: not opening ${JSON.stringify(data.url)}: not on ${self.location.origin}`);
    const windows = await self.clients.matchAll({ type: 'window', includeUncontrolled: true });
    const there = windows.find((client) => client.url === target.url);
    const chosen = there ?? windows[0];
    if (chosen) {
      const focused = await chosen.focus();
      focused.postMessage({ herald: 'notificationclick', data });
      return focused;
    }
    return self.clients.openWindow(target.url);
  })();
  event.waitUntil?.(handled);
  return handled;
};

self.addEventListener('push', (event) => { self.heraldPush(event); });
self.addEventListener('notificationclick', (event) => { self.heraldNotificationClick(event); });
// A new version of this file (an upgraded server) takes over at once: it holds no state.
self.addEventListener('install', () => { self.skipWaiting(); });
