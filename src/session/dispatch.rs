//! Carrying out a [`Plan`]: the refusals, the commands the proxy answers
//! itself, and the hand-off to transactions, blocking and routing.

use super::plan::{self, Local, Plan, Refusal};
use super::{ordering, ReplyMode, Session};
use crate::codec;
use crate::command;
use crate::local;
use std::time::Instant;

impl Session {
    /// Carry out the plan for command `indexed` (its table index and entry).
    pub(super) fn execute(
        &mut self,
        indexed: Option<(usize, &'static command::Command)>,
        plan: Plan,
        frame: &[u8],
        args: &[&[u8]],
        keys: &[usize],
        now: Instant,
    ) {
        let found = indexed.map(|(_, c)| c);
        let admitted = !matches!(&plan, Plan::Refused(r) if r.before_admission());
        if let (Some(cmd), true) = (found, admitted) {
            if self.pause_holds(cmd, args, now) {
                return;
            }
        }
        self.current = (indexed.map(|(i, _)| i), now);
        self.lane = ordering::lane(found.map(|c| c.name), self.txn.is_some(), self.in_multi());
        self.silent = match self.reply_mode {
            ReplyMode::On => false,
            ReplyMode::Off => true,
            ReplyMode::Skip => {
                self.reply_mode = ReplyMode::On;
                true
            }
        };
        let Some(cmd) = found.filter(|_| admitted) else {
            if let Plan::Refused(r) = &plan {
                if r.aborts_multi() {
                    self.abort_multi();
                }
                self.reply_now(r.reply(args));
            }
            return;
        };
        if self.subscribed_mode() {
            if let Err(e) = crate::pubsub::gate(cmd.name) {
                return self.reply_now(e);
            }
        }
        if plan != Plan::Reset {
            if let Some(e) = self.monitor_refusal(cmd) {
                return self.reply_now(e);
            }
        }
        if matches!(
            plan,
            Plan::Keyed | Plan::Keyless(_) | Plan::Refused(Refusal::Keys(_))
        ) {
            self.remember_script(cmd, args);
        }
        let result = match plan {
            Plan::Refused(r) => Err(r.reply(args)),
            Plan::Reset => {
                self.reset(now);
                Ok(())
            }
            Plan::Transaction => self.transaction(cmd, args, now),
            Plan::Queue => {
                if self.queue_pause(cmd, args, now) {
                    return;
                }
                let queued = self.queue_in_multi(cmd, frame, args, now);
                if queued.is_err() {
                    self.abort_multi();
                }
                queued
            }
            Plan::Local(local) => {
                self.local(local, frame, args, now);
                Ok(())
            }
            Plan::Blocking => self.blocking(cmd, frame, args, now),
            Plan::Keyed => self.keyed(cmd, frame, args, keys, now),
            Plan::Keyless(how) => self.keyless(cmd, how, frame, args, now),
            Plan::PubSub if cmd.name == "pubsub" => Err(self.pubsub_introspection(args)),
            Plan::PubSub if matches!(cmd.name, "publish" | "spublish") => {
                self.publish(cmd.name, args, now)
            }
            Plan::PubSub => {
                self.subscription(cmd.name, args, now);
                Ok(())
            }
        };
        if let Err(reply) = result {
            self.reply_now(reply);
        }
    }

    /// Clients repeat the same script (rate limiters, locks): skip the
    /// SHA1 and the shared lock when it is the one this client sent last.
    pub(super) fn remember_script(&mut self, cmd: &command::Command, args: &[&[u8]]) {
        let Some(body) = plan::script_body(cmd, args) else {
            return;
        };
        let generation = self.proxy.scripts.generation();
        if *body != self.last_script[..] || Some(generation) != self.last_script_gen {
            self.proxy.scripts.remember(body);
            self.last_script.clear();
            self.last_script.extend_from_slice(body);
            self.last_script_gen = Some(generation);
        }
    }

    /// Commands the proxy answers itself, like the single Redis the client
    /// believes it talks to.
    pub(super) fn local(&mut self, local: Local, frame: &[u8], args: &[&[u8]], now: Instant) {
        let reply = match local {
            Local::Reply(reply) => reply,
            // Like a Redis busy with a script: the proxy stands for all
            // the masters, and one of them is.
            Local::Ping(_) if self.subscribed_mode() => {
                crate::pubsub::subscribed_pong(args.get(1).copied())
            }
            Local::Ping(pong) => self
                .upstream
                .as_ref()
                .and_then(|u| u.busy_reply())
                .unwrap_or(pong),
            Local::Quit => {
                // Answer, then close once earlier replies are out.
                self.closing = true;
                codec::simple("OK")
            }
            Local::ClientReply => self.client_reply(args),
            Local::Monitor => return self.start_monitor(now),
            Local::Client => match self.client_admin(frame, args, now) {
                Some(reply) => reply,
                None => local::client(&mut self.state, args),
            },
            Local::Acl => self.acl(args),
            Local::Hello => return self.hello(args, now),
            Local::Auth => return self.auth(args, now),
            Local::Cluster => local::cluster(
                &self.state,
                args,
                self.proxy.config.settings.enable_hashtagging,
            ),
        };
        self.reply_now(reply);
    }

    /// `RESET`: back to a new connection's state — no transaction (its
    /// WATCH connection released), RESP2, no name, replies on, and
    /// unauthenticated again when downstream auth is configured, the
    /// default user again towards the nodes.
    pub(super) fn reset(&mut self, now: Instant) {
        self.end_txn(now);
        self.stop_monitor();
        self.end_pubsub();
        self.state.resp3 = false;
        self.state.name = None;
        self.state.authenticated = !self.proxy.auth().required();
        self.user = None;
        self.reply_mode = ReplyMode::On;
        self.silent = false;
        self.reply_now(codec::simple("RESET"));
    }

    /// `CLIENT REPLY ON|OFF|SKIP`, kept by the proxy: the commands still
    /// run, only their replies are dropped before they reach the client.
    pub(super) fn client_reply(&mut self, args: &[&[u8]]) -> Vec<u8> {
        if args.len() != 3 {
            return codec::error("ERR wrong number of arguments for 'client|reply' command");
        }
        let mode = args[2];
        if mode.eq_ignore_ascii_case(b"on") {
            self.reply_mode = ReplyMode::On;
            self.silent = false;
        } else if mode.eq_ignore_ascii_case(b"off") {
            self.reply_mode = ReplyMode::Off;
            self.silent = true;
        } else if mode.eq_ignore_ascii_case(b"skip") {
            // As in Redis, SKIP does nothing while replies are off.
            if self.reply_mode != ReplyMode::Off {
                self.reply_mode = ReplyMode::Skip;
            }
            self.silent = true;
        } else {
            return codec::error("ERR syntax error");
        }
        codec::simple("OK")
    }
}
