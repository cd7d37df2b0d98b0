"""The real-rig edge: the PortAudio duplex stream, the supervisor (threads, stream recovery,
watchdog), the control channel polling, stored path estimates and sd_notify."""
