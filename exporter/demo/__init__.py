"""A real nginx + PHP-FPM + uvicorn stack for tests and demos, with fault injection."""
