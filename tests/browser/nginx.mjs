// A private nginx for the tests: a configuration of deploy/nginx/ with its addresses and log
// directory replaced, under a minimal main configuration whose pid, logs and temp files are in a
// directory of the test's. Started as `nginx -p <dir>`, stopped by its PID.

import { spawn, spawnSync } from 'node:child_process';
import { chmodSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import assert from 'node:assert/strict';

import { WAIT_MS } from './lib.mjs';

export class Nginx {
  /**
   * `conf`: the path of a file of deploy/nginx/; `replacements`: `[pattern, replacement]` pairs,
   * each pattern found exactly once (else the test fails rather than run another configuration);
   * `probe`: a path that answers 2xx once nginx is up.
   */
  static async start({ dir, conf, replacements, port, probe = '/' }) {
    const nginx = new Nginx();
    nginx.dir = dir;
    nginx.port = port;
    mkdirSync(dir, { recursive: true });
    // nginx's workers run as an unprivileged user when the master is root: they must reach `dir`.
    chmodSync(dir, 0o755);
    let text = readFileSync(conf, 'utf8');
    for (const [pattern, replacement] of replacements) {
      const matches = text.match(new RegExp(pattern.source, 'gm'));
      assert.equal(matches?.length, 1, `${conf} has ${pattern} once`);
      text = text.replace(new RegExp(pattern.source, 'm'), replacement);
    }
    writeFileSync(join(dir, 'site.conf'), text);
    writeFileSync(join(dir, 'nginx.conf'), [
      '# The main configuration of the test\'s private nginx; the site is site.conf.',
      'worker_processes 1;',
      `pid ${dir}/nginx.pid;`,
      `error_log ${dir}/error.log warn;`,
      'events { worker_connections 1024; }',
      'http {',
      `  client_body_temp_path ${dir}/client_body;`,
      `  proxy_temp_path ${dir}/proxy;`,
      `  fastcgi_temp_path ${dir}/fastcgi;`,
      `  uwsgi_temp_path ${dir}/uwsgi;`,
      `  scgi_temp_path ${dir}/scgi;`,
      `  include ${dir}/site.conf;`,
      '}',
      '',
    ].join('\n'));
    const args = ['-p', dir, '-c', join(dir, 'nginx.conf'), '-e', join(dir, 'error.log')];
    const check = spawnSync('nginx', [...args, '-t', '-q'], { encoding: 'utf8' });
    if (check.error || check.status !== 0) {
      throw new Error(`nginx -t failed (is nginx installed? scripts/browser-tests.sh installs it): ${check.error ?? check.stderr}`);
    }
    nginx.child = spawn('nginx', [...args, '-g', 'daemon off;'], { stdio: ['ignore', 'ignore', 'pipe'] });
    nginx.stderr = '';
    nginx.child.stderr.on('data', (chunk) => { nginx.stderr += chunk; });
    nginx.exited = new Promise((resolve) => nginx.child.once('exit', (code, signal) => resolve({ code, signal })));
    const deadline = Date.now() + WAIT_MS;
    for (;;) {
      try {
        if ((await fetch(`${nginx.url}${probe}`)).ok) break;
      } catch { /* not listening yet */ }
      if (Date.now() > deadline) throw new Error(`nginx did not answer on ${nginx.url}${probe}: ${nginx.stderr}`);
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
    return nginx;
  }

  get url() {
    return `http://127.0.0.1:${this.port}`;
  }

  /** The error log, for a failure's report. */
  errorLog() {
    try {
      return readFileSync(join(this.dir, 'error.log'), 'utf8');
    } catch {
      return '';
    }
  }

  /** SIGQUIT (nginx's graceful stop) by PID, then SIGKILL if it takes more than 5 s. */
  async stop() {
    if (!this.child || this.child.exitCode !== null || this.child.signalCode !== null) return;
    this.child.kill('SIGQUIT');
    const stopped = await Promise.race([this.exited, new Promise((resolve) => setTimeout(resolve, 5_000).unref())]);
    if (!stopped) {
      this.child.kill('SIGKILL');
      await this.exited;
    }
  }
}
