"""`manage.py demo` (via `make demo`): the gateway and the built-in fake Grok, with demo accounts.

Offline: GROK_BASE_URL points at the fake, which this command starts in a thread.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError

from gateway.management.commands.serve import refuse_busy_port
from pools.importing import import_tokens

# JSON lines, the same format operators can feed `import_tokens`.
DEMO_ACCOUNTS = "\n".join([
    '{"token": "demo-basic-1", "tier": "basic", "note": "demo"}',
    '{"token": "demo-basic-2", "tier": "basic", "note": "demo"}',
    '{"token": "demo-super-1", "tier": "super", "note": "demo"}',
    '{"token": "demo-heavy-1", "tier": "heavy", "note": "demo"}',
])


class Command(BaseCommand):
    help = "Run the gateway against the built-in fake Grok upstream, with demo accounts."

    def handle(self, *args, **options) -> None:
        upstream = urlsplit(settings.GROK_BASE_URL)
        if upstream.hostname not in ("127.0.0.1", "localhost"):
            self.stderr.write(f"refusing to run the demo against {settings.GROK_BASE_URL}: use `make demo`")
            return
        # The fake is test and demo code: a running gateway never imports it.
        from gateway.fakegrok import FakeGrok

        fake_port = upstream.port or 80
        # Both ports before anything starts: a busy one ends the demo in one line, not a traceback.
        refuse_busy_port(upstream.hostname, fake_port, "FAKE_PORT", f"`make demo FAKE_PORT={fake_port + 1}`")
        refuse_busy_port(settings.HOST, settings.PORT, "PORT", f"`make demo PORT={settings.PORT + 1}`")
        call_command("migrate", "--noinput", verbosity=0)
        fake = FakeGrok(host=upstream.hostname, port=fake_port)
        try:
            fake.start_in_thread()
        except OSError as exc:  # taken since the check
            raise CommandError(f"cannot start the fake Grok on {upstream.hostname}:{fake_port} ({exc.strerror or exc})"
                               f": set FAKE_PORT to a free port") from None
        import_tokens(DEMO_ACCOUNTS)  # duplicates are skipped, so a second `make demo` is fine
        self.stdout.write(self._snippets())
        self.stdout.flush()
        call_command("serve")

    def _snippets(self) -> str:
        base = f"http://{settings.HOST}:{settings.PORT}"
        key = settings.API_KEYS[0] if settings.API_KEYS else "none"
        return f"""
fake Grok upstream on {settings.GROK_BASE_URL}; demo accounts: 2 basic, 1 super, 1 heavy

Try it (in another terminal):

curl -N {base}/v1/chat/completions -H 'Authorization: Bearer {key}' -H 'Content-Type: application/json' -d '{{"model": "grok-chat-fast", "stream": true, "messages": [{{"role": "user", "content": "Hello, Grok"}}]}}'

.venv/bin/python -c '
import openai
client = openai.OpenAI(base_url="{base}/v1", api_key="{key}")
for chunk in client.chat.completions.create(model="grok-chat-expert", stream=True, messages=[{{"role": "user", "content": "What is new?"}}]):
    delta = chunk.choices[0].delta if chunk.choices else None
    print((delta and (delta.content or getattr(delta, "reasoning_content", None))) or "", end="", flush=True)
print()
'
"""
