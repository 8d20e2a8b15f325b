// The server's database is put back from an older copy and its epoch renewed (`herald
// reset-epoch`): every tab, whatever its transport, resumes with the seq *and epoch* it had,
// gets one `reset` with the restored log's last seq (below its own), takes the new epoch, and
// then receives the restored log's next seq, which it had seen before under the old epoch.
// Without the epoch the tabs would resume from a seq ahead of the restored log (400, then a
// reset with no seq) or, once the restored log has grown past it, skip its new notifications.

import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { copyFileSync, existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import {
  HeraldServer, heraldBinary, launchBrowser, newContext, openTab, recorded, until, waitForNotifications, waitForStatus,
} from './lib.mjs';

let browser;
before(async () => { browser = await launchBrowser(); });
after(async () => { await browser?.close(); });

const DATABASE_FILES = ['herald.db', 'herald.db-wal'];

/** Copies the (stopped) server's database files from `from` to `to`, dropping any `-shm`. */
function copyDatabase(from, to) {
  for (const name of [...DATABASE_FILES, 'herald.db-shm']) rmSync(join(to, name), { force: true });
  for (const name of DATABASE_FILES) {
    if (existsSync(join(from, name))) copyFileSync(join(from, name), join(to, name));
  }
}

test('every tab resets once and goes on in the new epoch after the database is restored', async (t) => {
  const server = await HeraldServer.start();
  t.after(() => server.dispose());
  const backup = mkdtempSync(join(tmpdir(), 'herald-backup-'));
  t.after(() => rmSync(backup, { recursive: true, force: true }));
  const context = await newContext(browser, server);
  t.after(() => context.close());

  const tabs = [];
  for (const transport of ['sse', 'ws', 'poll']) {
    tabs.push(await openTab(context, server, { user: 'alice', session: 'laptop', transport }));
  }
  const first = (await recorded(tabs[0])).epoch;
  assert.match(first ?? '', /^[0-9a-f]{32}$/, 'hello named the database epoch');
  for (const data of ['1', '2']) await server.publish({ to: { user: 'alice' }, data });
  for (const tab of tabs) await waitForNotifications(tab, 2);

  // The backup: taken with the server stopped, after seq 2.
  await server.stop();
  copyDatabase(server.dataDir, backup);
  await server.restart();
  for (const data of ['3 (lost)', '4 (lost)', '5 (lost)']) await server.publish({ to: { user: 'alice' }, data });
  for (const tab of tabs) await waitForNotifications(tab, 5);
  for (const tab of tabs) assert.equal((await recorded(tab)).epoch, first, 'a restart keeps the epoch');

  // The restore: the backup put back, and its epoch renewed, as an operator does.
  await server.stop();
  copyDatabase(backup, server.dataDir);
  const renewed = execFileSync(heraldBinary(), ['reset-epoch', '--data-dir', server.dataDir], { encoding: 'utf8' }).trim();
  assert.notEqual(renewed, first);
  await server.restart();
  for (const tab of tabs) await waitForStatus(tab, 'open');
  for (const tab of tabs) {
    await until(async () => (await recorded(tab)).resets.length > 0, () => 'a reset');
  }
  await server.publish({ to: { user: 'alice' }, data: '3 (after the restore)' });

  for (const [i, tab] of tabs.entries()) {
    const got = await waitForNotifications(tab, 6);
    assert.deepEqual(
      got.map((n) => [n.seq, n.data]),
      [[1, '1'], [2, '2'], [3, '3 (lost)'], [4, '4 (lost)'], [5, '5 (lost)'], [3, '3 (after the restore)']],
      `tab ${i} (${(await recorded(tab)).transport})`,
    );
    const state = await recorded(tab);
    assert.deepEqual(state.resets, [{ last_seq: 2 }], `tab ${i}: one reset, to the restored log's last seq`);
    assert.equal(state.epoch, renewed, `tab ${i} took the new epoch`);
    assert.equal(state.lastSeq, 3);
    assert.deepEqual(state.closed, []);
  }
});
