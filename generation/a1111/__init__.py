"""The AUTOMATIC1111-compatible API under /sdapi/v1/, per user (reference/a1111-api.md).

Existing A1111 clients work unchanged, but every call acts on the caller's own jobs and
settings: requests are translated to the platform's parameters (`translation`), submitted through
`generation.submission.submit_job` like a job from the page, and waited for without holding a
thread or a transaction (`waiting`); listings, options and progress read the caller's view.
"""
