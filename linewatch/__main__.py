from linewatch.cli import main
import sys
sys.exit(main())
