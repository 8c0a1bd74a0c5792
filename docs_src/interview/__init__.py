"""The interview question bank (bank.toml) and its loader; rendered into the site by tools/interview_hook.py."""
