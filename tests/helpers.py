"""Reward functions used by tests (importable by name from configs)."""
import time

from rlhf_dist.rewards.rules import char_fraction


def slow_char_fraction(prompt: str, response: str) -> float:
    """char_fraction after 50 ms: widens each step so a test can act in the middle of a run."""
    time.sleep(0.05)
    return char_fraction(prompt, response)


def sleepy(prompt: str, response: str) -> float:
    time.sleep(2)
    return 1.0


def not_a_number(prompt: str, response: str) -> float:
    return float("nan")


def stuck(prompt: str, response: str) -> float:
    """Never returns."""
    while True:
        time.sleep(1)


def returns_bool(prompt: str, response: str):
    return True


def returns_string(prompt: str, response: str):
    return "0.5"


def prompt_only(prompt: str) -> float:
    """Cannot take (prompt, response)."""
    return 0.0


def keyword_only(*, prompt: str, response: str) -> float:
    return 0.0


def counting_char_fraction(prompt: str, response: str, log: str) -> float:
    """char_fraction that appends the prompt it scored to `log`: counts how often each prompt was trained on."""
    with open(log, "a", encoding="utf-8") as f:
        f.write(prompt.replace("\n", " ") + "\n")
    return char_fraction(prompt, response)


def stuck_on_bad(prompt: str, response: str) -> float:
    """Never returns for the response "bad"; 1.0 otherwise."""
    while response == "bad":
        time.sleep(1)
    return 1.0


def counting_fails_on_bad(prompt: str, response: str, log: str) -> float:
    """Appends each response it is called with to `log`; raises for the response "bad", 1.0 otherwise."""
    with open(log, "a", encoding="utf-8") as f:
        f.write(response + "\n")
    if response == "bad":
        raise ValueError("bad answer")
    return 1.0


def exits_on_bad(prompt: str, response: str) -> float:
    """Ends its own process for the response "bad" (a crashing native library, an out-of-memory kill); 1.0 otherwise."""
    import os
    import signal

    if response == "bad":
        os.kill(os.getpid(), signal.SIGKILL)
    if response == "quit":
        os._exit(3)
    return 1.0


def raises(prompt: str, response: str) -> float:
    """Always fails, two calls deep, so a test can look for this file's lines in the run's log."""
    return _score_or_fail(response)


def _score_or_fail(response: str) -> float:
    raise ValueError("no score for this response\n(a second line that the console must not show)")
