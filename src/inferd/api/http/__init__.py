"""The HTTP adapters: V2 REST, KServe V1, OpenAI, V2 generate and the WebSocket route."""
