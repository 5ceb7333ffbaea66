//! WebSocket upgrades and actix-ws message limits over real sockets.
