#pragma once
// Self-fencing (docs/semantics.md, "Range moves: why a stale proxy cannot write"). A proxy that
// follows a meta store may send key requests to shards only while its registration there is
// certainly alive: a mover that saw the registration expire may cut a range over without this
// proxy's acknowledgement. The registration thread extends the validity after each renewal
// (from the renewal's send time, minus a margin); key requests are refused at their start, and
// a connection whose key calls would be written after the validity ended is closed instead.
// A SIGSTOP between that check and the write is covered by shutting every upstream socket down
// when the process continues (SIGCONT), before the interrupted write can run.
//
// Without a meta store there is nothing to fence: the validity is unbounded.
#include <chrono>
#include <cstdint>
#include <string>

namespace esp::fence {

using SteadyClock = std::chrono::steady_clock;

// Arms fencing: from now on sends are allowed only until the time set below (none yet).
void Engage();
bool Engaged();
// Sends are allowed until `until` (steady clock).
void AllowUntil(SteadyClock::time_point until);
// Whether key requests may be sent now (always true when not engaged).
bool SendAllowed();
// Seconds since sends stopped being allowed (0 while allowed).
double SecondsFenced();
// UNAVAILABLE text for requests refused while fenced.
std::string FencedMessage();

// Upstream sockets, shut down on SIGCONT. Async-signal-safe bookkeeping (fixed slots).
void RegisterSocket(int fd);
void UnregisterSocket(int fd);
// Installs the SIGCONT handler (once; with Engage()).
void InstallContinueHandler();

}  // namespace esp::fence
