"""The dashboard: the service's own web page (job list, live job page, submit and dataset pages)."""
