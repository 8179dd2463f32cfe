//! OpenAI-compatible model client and prompt rendering for agent loops.
