"""The browser face of Terminus: sign-in and the job watch page at /jobs/ (driven by terminus.js)."""
