//! Handler tests of the member: build a state, call one handler, assert the exact commands and events.
