"""keyturn's benchmark harness: real servers, driven from outside by wrk (`make bench`)."""
