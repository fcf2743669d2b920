// The program wlexec.run_node hands off to: an HTTP server whose requests run
// a job (see wljobs.py: TOKEN.started, wait, TOKEN.done in $COMPANION_STATE).
"use strict";
const fs = require("fs");
const http = require("http");
const path = require("path");

const state = process.env.COMPANION_STATE;

const server = http.createServer((request, response) => {
  const url = new URL(request.url, "http://localhost");
  const token = url.searchParams.get("token");
  if (url.pathname !== "/job" || !/^[0-9a-f]+$/.test(token || "")) {
    response.writeHead(404, { Connection: "close" });
    response.end("not found\n");
    return;
  }
  const seconds = Number(url.searchParams.get("seconds") || "0");
  fs.writeFileSync(path.join(state, `${token}.started`), String(process.pid));
  setTimeout(() => {
    fs.writeFileSync(path.join(state, `${token}.done`), String(process.pid));
    response.writeHead(200, { "Content-Type": "text/plain", Connection: "close" });
    response.end(`${process.pid}\n`);
  }, seconds * 1000);
});

process.on("SIGTERM", () => {
  // Stop accepting; node exits once the requests in progress are answered.
  server.close();
  server.closeIdleConnections();
});

server.listen(Number(process.env.WL_NODE_PORT), "127.0.0.1", () => {
  // Tell the manager it is listening: the notify socket survives the exec.
  const fd = Number(process.env.GUNICORN_COMPANION_NOTIFY_FD);
  if (Number.isInteger(fd)) {
    try {
      fs.writeSync(fd, `ready ${process.pid}`);
    } catch (error) {
      console.error(`cannot tell the manager it is ready: ${error.message}`);
    }
  }
});
