"""A reward served over HTTP: JSON in, JSON out (nothing received is ever unpickled).

Config example:
    reward:
      functions:
        - name: rlhf_dist.rewards.remote:http_reward
          timeout_s: 10
          retries: 2
          kwargs: {url: "http://127.0.0.1:8000/score", api_key_env: JUDGE_API_KEY}

The request body is {"prompt", "response", "label"}; the answer must be a JSON object with a number under
`field` ("reward"). The API key is read from the environment variable named by `api_key_env`, so it never
appears in configs, logs or the run directory. Redirects are never followed: the key goes to the configured
url only, and a redirecting server is an error naming where it pointed.
"""
from __future__ import annotations

import json
import os
import urllib.error
import urllib.request


class _RefuseRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req, fp, code, msg, headers, newurl):
        raise urllib.error.HTTPError(
            req.full_url, code, f"redirect to {newurl} refused (the API key is only sent to the configured url)", headers, fp
        )


_OPENER = urllib.request.build_opener(_RefuseRedirects)


def http_reward(prompt: str, response: str, url: str, label=None, api_key_env: str | None = None,
                field: str = "reward", request_timeout_s: float = 30.0):
    headers = {"Content-Type": "application/json"}
    if api_key_env:
        key = os.environ.get(api_key_env)
        if not key:
            raise RuntimeError(f"environment variable {api_key_env} (api_key_env) is not set")
        headers["Authorization"] = f"Bearer {key}"
    body = json.dumps({"prompt": prompt, "response": response, "label": label}).encode()
    req = urllib.request.Request(url, data=body, headers=headers, method="POST")
    with _OPENER.open(req, timeout=request_timeout_s) as resp:
        answer = json.loads(resp.read().decode("utf-8"))
    if not isinstance(answer, dict) or field not in answer:
        raise ValueError(f"reward server answered without a {field!r} field")
    # Unconverted: the pool refuses anything but a number (true or "0.75" is an error naming this function).
    return answer[field]
