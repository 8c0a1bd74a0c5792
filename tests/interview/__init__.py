"""Tests for the interview question bank, its loader, and the pages and deck the hook builds."""
