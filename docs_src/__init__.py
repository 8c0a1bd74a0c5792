"""Tutorial code included by the site's pages; every file is run by tests/tutorials/."""
