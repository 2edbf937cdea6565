#!/usr/bin/env python3
"""fake-manager.py SOCKET LOG: a stand-in for spored's control socket
(docs/site-control.md) with a fixed little site, for sporectl's tests.

Services: web (desired 2, running 2, min 1, max 4) and db (desired 1,
whose rollout to generation 2 failed: `rollback db` returns it to 1).
Every service-show of a service whose running is not desired moves it one
clone nearer, so a `scale web 4 --wait` converges after two polls.  A
deleted service loses one clone per clone-list poll and disappears when
it has none left.  The service "stuck" never converges.  Each request is
appended to LOG, one JSON line, for the tests to check what was sent.
"""
import json
import os
import socketserver
import sys
import threading

lock = threading.Lock()
services = {
    "web": {"desired": 2, "running": 2, "clones": 2, "deleting": False},
    "db": {"desired": 1, "running": 1, "clones": 1, "deleting": False,
           "generation": 2,
           "rollout": {"state": "failed", "generation": 2,
                       "from_generation": 1, "started": 1700000000.0,
                       "finished": 1700000042.0,
                       "reason": "a clone of generation 2 failed: hv-1: "
                                 "cannot write '/etc/hostname/x'",
                       "updated": 1, "updated_running": 0, "old": 1,
                       "old_running": 1, "max_unavailable": 0,
                       "max_surge": 1}},
    "stuck": {"desired": 1, "running": 0, "clones": 1, "deleting": False},
}


def summary(name):
    s = services[name]
    r = {"name": name, "generation": s.get("generation", 1),
         "image": "debian-12", "min": 1,
         "max": 4, "desired": s["desired"],
         # stuck's hosts have not reported since the manager started
         "running": None if name == "stuck" else s["running"],
         "deleting": s["deleting"], "cooldown_until": 0, "rollout": None}
    if "rollout" in s:
        r["rollout"] = s["rollout"]
    return r


def clones(name):
    s = services[name]
    return [{"name": "%s-%d" % (name, i), "service": name, "index": i,
             "host": "hv-1", "generation": 1,
             "state": "running" if i < s["running"] else "creating"}
            for i in range(s["clones"])]


def handle(req):
    cmd = req.get("cmd")
    name = req.get("name")
    if cmd == "service-list":
        return {"ok": True, "services": [summary(n) for n in services]}
    if cmd == "service-show":
        if name not in services:
            return {"ok": False, "error": "no service '%s'" % name}
        s = services[name]
        r = {"ok": True, "service": dict(summary(name), clones=clones(name))}
        if name != "stuck" and s["running"] < s["desired"]:
            s["running"] += 1
            s["clones"] = max(s["clones"], s["running"])
        elif name != "stuck" and s["running"] > s["desired"]:
            s["running"] -= 1
            s["clones"] = s["running"]
        return r
    if cmd == "clone-list":
        want = req.get("service")
        out = [c for n in services if want in (None, n) for c in clones(n)]
        for n in list(services):
            s = services[n]
            if want in (None, n) and s["deleting"]:
                s["clones"] -= 1
                s["running"] = min(s["running"], s["clones"])
                if s["clones"] <= 0:
                    del services[n]
        return {"ok": True, "clones": out}
    if cmd == "scale":
        if name not in services:
            return {"ok": False, "error": "no service '%s'" % name}
        services[name]["desired"] = req["count"]
        return {"ok": True, "service": name, "desired": req["count"]}
    if cmd == "rollback":
        # db failed a rollout from generation 1 to 2: back to 1
        if name not in services:
            return {"ok": False, "error": "no such service '%s'" % name}
        if name != "db":
            return {"ok": False, "error": "service '%s' has no earlier "
                    "generation to return to (it is at generation 1)" % name}
        services[name]["generation"] = 1
        services[name]["rollout"] = {
            "state": "rolling", "generation": 1, "from_generation": 2,
            "started": 1700000000.0, "finished": None, "updated": 1,
            "updated_running": 1, "old": 1, "old_running": 0,
            "max_unavailable": 0, "max_surge": 1}
        return {"ok": True, "service": name, "generation": 1,
                "from_generation": 2}
    if cmd == "service-delete":
        if name not in services:
            return {"ok": False, "error": "no service '%s'" % name}
        services[name]["deleting"] = True
        return {"ok": True, "service": name}
    if cmd == "host-list":
        return {"ok": True, "hosts": [
            {"name": h, "state": "up", "accepted": True, "key": "K",
             "address": "127.0.0.1", "cpus": 2, "memory_kib": 1024,
             "clones": 1, "last_seen": 1.0} for h in ("hv-1", "hv-2")]}
    if cmd == "image-list":
        return {"ok": True, "images": [
            {"name": "debian-12", "id": "sha256:00", "size": 1 << 20,
             "chunk_size": 65536, "origins": ["http://127.0.0.1/d"],
             "hosts": [{"host": "hv-1", "cached_fraction": 0.5,
                        "fetched": {"origin": 1, "peer": 0, "local": 0}}]}]}
    if cmd == "events":
        # events 1-3; event 4 once the file LOG.more exists (a manager
        # restarted with news)
        n = 4 if os.path.exists(sys.argv[2] + ".more") else 3
        since = req.get("since", 0)
        return {"ok": True, "events": [
            {"id": i, "time": 1700000000.0 + i, "kind": "test",
             "service": "web", "host": "hv-1", "message": "event %d" % i}
            for i in range(1, n + 1) if i > since]}
    return {"ok": False, "error": "unknown command '%s'" % cmd}


class Handler(socketserver.StreamRequestHandler):
    def handle(self):
        for line in self.rfile:
            req = json.loads(line)
            with lock:
                with open(sys.argv[2], "a") as log:
                    log.write(json.dumps(req) + "\n")
                reply = handle(req)
            self.wfile.write((json.dumps(reply) + "\n").encode())


class Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


if __name__ == "__main__":
    if os.path.exists(sys.argv[1]):
        os.unlink(sys.argv[1])
    Server(sys.argv[1], Handler).serve_forever()
