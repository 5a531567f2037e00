// Node.js IPC between processes, the structured-clone IPC of Electron-class hosts:
// `child_process.fork` with `serialization: 'advanced'`, one request/reply at a time.
// Usage: node ipc.js COUNT SIZE  -> prints {"ns_per_op": N}
'use strict';
const { fork } = require('child_process');

if (process.argv[2] === 'child') {
  process.on('message', (message) => process.send(message));
} else {
  const count = parseInt(process.argv[2] || '5000', 10);
  const size = parseInt(process.argv[3] || '16', 10);
  const warmup = Math.min(1000, count);
  const child = fork(__filename, ['child'], { serialization: 'advanced' });
  const request = { channel: 'echo', value: { bytes: Buffer.alloc(size, 7) } };
  let sent = 0;
  let start = 0n;
  child.on('message', () => {
    sent += 1;
    if (sent === warmup) start = process.hrtime.bigint();
    if (sent === warmup + count) {
      const nanos = Number(process.hrtime.bigint() - start);
      console.log(JSON.stringify({ ns_per_op: nanos / count }));
      child.kill();
      return;
    }
    child.send(request);
  });
  child.send(request);
}
