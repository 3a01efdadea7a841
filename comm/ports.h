// Picking a TCP port for a listener that must be named before it starts (a c10d TCPStore, whose
// address every rank is given up front). Servers that can bind port 0 themselves should do that
// and report the port instead (coordinator --port-file).
#pragma once

namespace lowband::comm {

// A TCP port on 127.0.0.1 that was free a moment ago (bound to port 0 and released); 0 on failure.
int FreeLoopbackPort();

}  // namespace lowband::comm
