"""xps-console: the Textual operator console of eXpServer.

The console talks to a server only through a `Link` (`xps_console.link`): the event stream in,
named commands out. `EmbeddedLink` runs the server on a background thread of this process;
`AttachedLink` steers a headless `xps-server` through its control socket. The app cannot tell
them apart.
"""
